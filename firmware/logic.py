# NodeLogic on the node: the shared rule engine (rules.py) on the node's clock and tz offsets.
import clock
import rules


def window(rule_list, local_ts):
    """The open window at a local time without tz: (rule id, run id, action, seconds left) or None."""
    w = rules.window(rule_list, [], local_ts)
    return (w[0], w[1], w[2], w[4] - local_ts) if w else None


def window_now(rule_list, now):
    """The open window at epoch `now` under the configured tz: (rule id, run id, action, seconds left) or None."""
    w = rules.window(rule_list, clock._tz, now)
    return (w[0], w[1], w[2], w[4] - now) if w else None
