"""summary.scope_diagnostics: live diagnostics first; on the model's own test split, what only training
could compute (probe, oracle, efficiency) comes from metrics.json, with its counts; elsewhere never."""

from __future__ import annotations

from moe_reward.evaluate import summary

LIVE = {
    "routing_nmi_null": 0.1,
    "routing_nmi_p": 0.01,
    "router_probe_nmi": None,
    "router_probe_pairs": 0,
    "oracle_routing_accuracy": None,
    "oracle_pairs": 0,
    "contingency": {"a": [3, 0]},
    "reasons": {"router_probe_nmi": "needs the model's training pairs"},
}
SAVED = {
    "test": {
        "diagnostics": {
            "routing_nmi_null": 0.2,
            "router_probe_nmi": 0.9,
            "router_probe_p": 0.002,
            "router_probe_pairs": 2615,
            "folds": 5,
            "oracle_routing_accuracy": 0.8,
            "pooled_head_accuracy": 0.5,
            "oracle_pairs": 869,
            "contingency": {"a": [9, 9]},
        }
    }
}


def test_saved_training_only_values_fill_in_on_the_test_split():
    d = summary.scope_diagnostics({"diagnostics": LIVE}, SAVED, on_test_split=True)
    assert d is not None
    assert d["router_probe_nmi"] == 0.9 and d["router_probe_pairs"] == 2615 and d["oracle_pairs"] == 869
    assert d["routing_nmi_null"] == 0.1 and d["contingency"] == {"a": [3, 0]}  # live wins where it computed
    assert "router_probe_nmi" not in d["reasons"]
    assert summary.diagnostic_subset("router_probe_nmi", d) == "CV on 2,615 training pairs · p 0.002"
    assert summary.diagnostic_subset("oracle_routing_accuracy", d) == "869 test pairs · one head 0.500"


def test_other_subsets_never_borrow_the_saved_values():
    d = summary.scope_diagnostics({"diagnostics": LIVE}, SAVED, on_test_split=False)
    assert d is not None and "router_probe_nmi" not in d and d["router_probe_pairs"] == 0
    assert summary.scope_diagnostics(None, None, on_test_split=True) is None
