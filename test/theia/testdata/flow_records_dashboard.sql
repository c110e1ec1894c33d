-- Copied from github.com/antrea-io/theia, build/charts/theia/provisioning/dashboards/flow_records_dashboard.json,
-- commit bc06ff0afe05c984f2efc7a53e68e8f152914c3e: every panel target's rawSql, verbatim, in dashboard order.
-- Each "-- panel:" line names the panel title and type (Grafana visualisation).
-- panel: Flow Records Count (stat)
SELECT count(*) as count
FROM flows
WHERE $__timeFilter(flowEndSeconds)
-- panel: Flow Records Count (timeseries)
SELECT count() as count, $__timeInterval(flowEndSeconds) as time
FROM flows
WHERE $__timeFilter(flowEndSeconds)
GROUP BY time
ORDER BY time
-- panel: Flow Records Table (table)
SELECT * 
FROM flows
WHERE $__timeFilter(flowEndSeconds)
ORDER BY flowEndSeconds DESC
LIMIT 10000
