from prometheus_client import Counter

EVALUATED = Counter("storeops_rules_events_evaluated_total", "Events evaluated against the active rules")
MATCHES = Counter("storeops_rules_matches_total", "Rule evaluations that matched and emitted actions", ["rule_id"])
