"""Mitogen's linear strategy, from the installed `mitogen` package (ansible.cfg's strategy_plugins names this folder).

Mitogen keeps one Python interpreter per host for the whole play and sends modules to it, instead of
starting a Python (and a new SSH session's worth of round trips) for every task. On an emulated Pi,
where each Python start costs seconds, that is most of a converge's time. Ansible can only find a
strategy plugin by file path, and a venv's site-packages path cannot be written into ansible.cfg, so
this file defines the strategy the way Mitogen's own ansible_mitogen/plugins/strategy/mitogen_linear.py
does: Ansible's linear strategy with Mitogen's mixin.
"""

from __future__ import annotations

import ansible_mitogen.loaders
import ansible_mitogen.strategy

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):  # type: ignore[misc,valid-type]
    pass
