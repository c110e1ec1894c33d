-- Copied from github.com/antrea-io/theia, build/charts/theia/provisioning/dashboards/node_to_node_dashboard.json,
-- commit bc06ff0afe05c984f2efc7a53e68e8f152914c3e: every panel target's rawSql, verbatim, in dashboard order.
-- Each "-- panel:" line names the panel title and type (Grafana visualisation).
-- panel: Cumulative Bytes of Node-to-Node (theia-grafana-sankey-plugin)
SELECT SUM(octetDeltaCount) as bytes, sourceNodeName as source, destinationNodeName as destination
From flows_node_view
WHERE source != '' AND destination != ''
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(flowEndSeconds)
GROUP BY source, destination
ORDER BY bytes DESC
LIMIT 50
-- panel: Cumulative Reverse Bytes of Node-to-Node (theia-grafana-sankey-plugin)
SELECT SUM(reverseOctetDeltaCount) as bytes, sourceNodeName as source, destinationNodeName as destination
From flows_node_view
WHERE source != '' AND destination != ''
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(flowEndSeconds)
GROUP BY source, destination
ORDER BY bytes DESC
LIMIT 50
-- panel: Throughput of Node-to-Node (timeseries)
SELECT $__timeInterval(flowEndSeconds) as time, CONCAT(sourceNodeName, '->', destinationNodeName) as pair, SUM(octetDeltaCount)*8000/$__interval_ms as Node
FROM flows_node_view
WHERE sourceNodeName != '' AND destinationNodeName != ''
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(time)
GROUP BY time, pair
ORDER BY time
-- panel: Reverse Throughput of Node-to-Node (timeseries)
SELECT $__timeInterval(flowEndSeconds) as time, CONCAT(sourceNodeName, '->', destinationNodeName) as pair, SUM(reverseOctetDeltaCount)*8000/$__interval_ms as Node
FROM flows_node_view
WHERE sourceNodeName != '' AND destinationNodeName != ''
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(time)
GROUP BY time, pair
ORDER BY time
-- panel: Throughput of Node as Source (timeseries)
SELECT $__timeInterval(flowEndSeconds) as time, sourceNodeName, SUM(octetDeltaCount)*8000/$__interval_ms
FROM flows_node_view
WHERE sourceNodeName != '' 
AND destinationNodeName != ''
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(time)
GROUP BY time, sourceNodeName
ORDER BY time
-- panel: Cumulative Bytes of Node as Source (piechart)
SELECT SUM(octetDeltaCount) as bytes, sourceNodeName
FROM flows_node_view
WHERE sourceNodeName != '' AND destinationNodeName != ''
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(flowEndSeconds)
GROUP BY sourceNodeName
ORDER BY bytes DESC
-- panel: Throughput of Node as Destination (timeseries)
SELECT $__timeInterval(flowEndSeconds) as time, destinationNodeName, SUM(octetDeltaCount)*8000/$__interval_ms
FROM flows_node_view
WHERE sourceNodeName != '' AND destinationNodeName != ''
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(time)
GROUP BY time, destinationNodeName
ORDER BY time
-- panel: Cumulative Bytes of Node as Destination (piechart)
SELECT SUM(octetDeltaCount) as bytes, destinationNodeName
FROM flows_node_view
WHERE sourceNodeName != '' AND destinationNodeName != ''
AND sourcePodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND destinationPodNamespace NOT IN ('kube-system', 'flow-visibility', 'flow-aggregator')
AND $__timeFilter(flowEndSeconds)
GROUP BY destinationNodeName
ORDER BY bytes DESC
