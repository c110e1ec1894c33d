-- Copied from github.com/antrea-io/theia, build/charts/theia/provisioning/dashboards/pod_to_pod_dashboard.json,
-- commit bc06ff0afe05c984f2efc7a53e68e8f152914c3e: every panel target's rawSql, verbatim, in dashboard order.
-- Each "-- panel:" line names the panel title and type (Grafana visualisation).
-- panel: Cumulative Bytes of Pod-to-Pod (theia-grafana-sankey-plugin)
SELECT SUM(octetDeltaCount) as bytes, 
CONCAT(sourcePodNamespace, '/', sourcePodName, ':', CAST(sourceTransportPort as VARCHAR)) as source, 
CONCAT(destinationPodNamespace, '/', destinationPodName, ':', CAST(destinationTransportPort as VARCHAR)) as destination
From flows_pod_view
WHERE flowType IN (1, 2)
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(flowEndSeconds)
GROUP BY source, destination
ORDER BY bytes DESC
LIMIT 50
-- panel: Cumulative Reverse Bytes of Pod-to-Pod (theia-grafana-sankey-plugin)
SELECT SUM(reverseOctetDeltaCount) as bytes, 
CONCAT(sourcePodNamespace, '/', sourcePodName, ':', CAST(sourceTransportPort as VARCHAR)) as source, 
CONCAT(destinationPodNamespace, '/', destinationPodName, ':', CAST(destinationTransportPort as VARCHAR)) as destination
From flows_pod_view
WHERE flowType IN (1, 2)
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(flowEndSeconds)
GROUP BY source, destination
ORDER BY bytes DESC
LIMIT 50
-- panel: Throughput of Pod-to-Pod (timeseries)
SELECT $__timeInterval(flowEndSeconds) as time, 
CONCAT(sourcePodNamespace, '/', sourcePodName, ':', CAST(sourceTransportPort as VARCHAR), ' -> ', destinationPodNamespace, '/', destinationPodName, ':', CAST(destinationTransportPort as VARCHAR)) as pair, 
AVG(throughput)
FROM flows_pod_view
WHERE flowType IN (1, 2)
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(time)
GROUP BY time, pair
HAVING AVG(throughput) > 0
ORDER BY time
-- panel: Reverse Throughput of Pod-to-Pod (timeseries)
SELECT $__timeInterval(flowEndSeconds) as time, 
CONCAT(sourcePodNamespace, '/', sourcePodName, ':', CAST(sourceTransportPort as VARCHAR), ' -> ', destinationPodNamespace, '/', destinationPodName, ':', CAST(destinationTransportPort as VARCHAR)) as pair, 
AVG(reverseThroughput)
FROM flows_pod_view
WHERE flowType IN (1, 2)
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(time)
GROUP BY time, pair
HAVING AVG(reverseThroughput) > 0
ORDER BY time
-- panel: Throughput of Pod as Source (timeseries)
SELECT $__timeInterval(flowEndSeconds) as time,
CONCAT(sourcePodNamespace, '/', sourcePodName, ':', CAST(sourceTransportPort as VARCHAR)) as src,
SUM(octetDeltaCount)*8000/$__interval_ms as throughput
FROM flows_pod_view
WHERE flowType IN (1, 2)
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(time)
GROUP BY time, src
HAVING throughput > 0
ORDER BY time
-- panel: Cumulative Bytes of Source Pod Namespace (piechart)
SELECT SUM(octetDeltaCount) as bytes, sourcePodNamespace
From flows_pod_view
WHERE flowType IN (1, 2)
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(flowEndSeconds)
GROUP BY sourcePodNamespace
HAVING bytes > 0
ORDER BY bytes DESC
-- panel: Throughput of Pod as Destination (timeseries)
SELECT $__timeInterval(flowEndSeconds) as time,
CONCAT(destinationPodNamespace, '/', destinationPodName, ':', CAST(destinationTransportPort as VARCHAR)) as dst,
SUM(octetDeltaCount)*8000/$__interval_ms as throughput
FROM flows_pod_view
WHERE flowType IN (1, 2)
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(time)
GROUP BY time, dst
HAVING throughput > 0
ORDER BY time
-- panel: Cumulative Bytes of Destination Pod Namespace (piechart)
SELECT SUM(octetDeltaCount) as bytes, destinationPodNamespace
From flows_pod_view
WHERE flowType IN (1, 2)
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(flowEndSeconds)
GROUP BY destinationPodNamespace
ORDER BY bytes DESC
