from prometheus_client import Counter, Gauge

EVALUATED = Counter("storeops_rules_events_evaluated_total", "Events evaluated against the active rules")
MATCHES = Counter("storeops_rules_matches_total", "Rule evaluations that matched and emitted actions", ["rule_id"])
RUNS = Counter("storeops_rules_runs_total", "Runs recorded, by mode and final status", ["mode", "status"])
STEPS = Counter("storeops_rules_steps_total", "Steps recorded, by action and status", ["action", "status"])
REPLAYED = Counter("storeops_rules_runs_replayed_total", "Matches skipped because their run was already on record")
GUARDRAIL = Counter("storeops_rules_guardrail_total", "Runs or steps stopped by a guardrail", ["guardrail"])
ACTIVE = Gauge("storeops_rules_active", "Active rules compiled and in use")
BROKEN = Counter("storeops_rules_broken_total", "Stored rules left out because they no longer compile")
