"""deploy/monitoring: the examples parse, and name only metrics the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"

EXPORTED = {
    "domed_jobs_submitted_total",
    "domed_jobs_finished_total",
    "domed_job_duration_seconds_bucket",
    "domed_job_duration_seconds_count",
    "domed_job_duration_seconds_sum",
    "domed_job_queue_wait_seconds_bucket",
    "domed_job_queue_wait_seconds_count",
    "domed_job_queue_wait_seconds_sum",
    "domed_jobs_running",
    "domed_executor_slots",
    "domed_queue_pending",
    "domed_projector_lag_events",
    "domed_log_lines_total",
}


def test_alert_rules_and_dashboard_parse_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bdomed_[a-z_]+", e)}
    assert used and used <= EXPORTED, used - EXPORTED
    assert {"domed_queue_pending", "domed_projector_lag_events"} <= used
    assert any("domed_jobs_finished_total" in e and "succeeded" in e for e in exprs)
    yaml.safe_load((MONITORING / "prometheus.yml").read_text())
