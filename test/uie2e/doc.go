// Package uie2e tests the flowlens UI in a real browser: Debian's chromium,
// headless, driven over the DevTools protocol (chromedp), against the UI
// server over a ClickHouse table the real agent and aggregator filled on a
// simulated node. The tests are in files built with the integration tag.
package uie2e
