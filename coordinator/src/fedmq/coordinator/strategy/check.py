"""The topic map's ``strategy`` section checked against the installed components: the names of the rule and
the server optimizer, and every parameter key with the type and bounds its component declares. Runs inside
``load_topic_map`` (the ``fedmq.topic_map_checks`` entry point), so problems carry file, line, key and fix."""

from __future__ import annotations

import difflib
from typing import Any, Dict, Optional, Tuple

from fedmq.coordinator.strategy.components import Param, Registry, UnknownComponent
from fedmq.coordinator.strategy.optimizer import OPTIMIZERS
from fedmq.coordinator.strategy.rule import FEDAVG, RULES
from fedmq.shared.topicmap import TopicMap
from fedmq.shared.topicmap.loader import STRATEGY_KEYS
from fedmq.shared.topicmap.reader import Reader

EXTEND = "; a rule or optimizer of your own is one module (docs/extending.md)"


def check_strategy(r: Reader, raw: Any, tm: TopicMap) -> None:
    """Record every problem of the strategy's components in ``r``."""
    s = tm.strategy
    m: Optional[dict] = raw if isinstance(raw, dict) else None
    chosen: Tuple[Tuple[str, str, Registry[Any], Tuple[str, ...]], ...] = (
        ("aggregator", s.aggregator, RULES, (FEDAVG,)),  # fedavg: the streaming sum, not a rule over rows
        ("server_optimizer", s.server_optimizer, OPTIMIZERS, ()))
    for key, name, registry, streaming in chosen:
        names = [*streaming, *registry.names()]
        if name not in names:
            r.error(r.line_of(m, key), f"strategy.{key}", f"must be one of {', '.join(names)}, not {name!r}",
                    f"pick one of {', '.join(names)}" + EXTEND)
        elif name not in streaming:
            try:
                picked = registry.get(name)
            except UnknownComponent as exc:
                r.error(r.line_of(m, key), f"strategy.{key}", str(exc),
                        "install the distribution that provides it again, or pick another")
                continue
            if getattr(picked, "trusted", False) and tm.evaluation is None:
                r.error(r.line_of(m, key), f"strategy.{key}", f"{name} scores updates against the global model "
                        "trained on a data set the coordinator trusts, and the topic map names none",
                        "add evaluation: {kind: npz, path: trusted.npz} (a small labelled set from the homes' "
                        "population), or pick another aggregator")
    known: Dict[str, Tuple[str, Param]] = {**RULES.all_params(), **OPTIMIZERS.all_params()}
    for key in s.params:
        if key not in known:
            close = difflib.get_close_matches(key, [*STRATEGY_KEYS, *known], n=1)
            r.error(r.line_of(m, key), f"strategy.{key}", "unknown key (neither a strategy key nor a parameter of "
                    "an installed rule or server optimizer)",
                    f"did you mean '{close[0]}'?" if close else f"strategy keys: {', '.join(STRATEGY_KEYS)}; "
                    f"parameters: {', '.join(sorted(known))}")
            continue
        component, param = known[key]
        r.value(m, key, "strategy", param.kind, param.default, minimum=param.minimum, maximum=param.maximum,
                fix=_fix(component, param))


def _fix(component: str, param: Param) -> str:
    """What a parameter is and takes: 'trim_fraction of trimmed_mean (the fraction cut at each end): a number
    from 0 to 0.49'."""
    kind = {int: "an integer", float: "a number"}.get(param.kind, param.kind.__name__)
    if param.minimum is not None and param.maximum is not None:
        kind += f" from {param.minimum:g} to {param.maximum:g}"
    elif param.minimum is not None:
        kind += f" >= {param.minimum:g}"
    about = f" ({param.help})" if param.help else ""
    return f"{param.name} of {component}{about}: {kind}"
