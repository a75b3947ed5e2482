"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018): every change is clipped to C and
equally weighted; Gaussian noise of standard deviation ``z * C`` goes on the sum at the root (central) or
on every change on its node (local). The privacy spent is tracked by Google's dp-accounting library (RDP
accountant) and reported after every round as epsilon at the configured delta.

Central: each round is a Gaussian mechanism of multiplier ``z`` on the sum of clipped changes
(sensitivity C, add-or-remove-one neighbours) on a sample of the online nodes, accounted as Poisson sampling
at rate selected / online (the usual approximation for a fixed-size uniform sample, as TensorFlow Federated
and Opacus make); the mean divides by the number selected (fixed before anyone trains), not by the number
that answered.
Local: each node releases a Gaussian mechanism of multiplier ``z`` in every round it takes part in; the
report is for a node that takes part in every round (the worst case).
"""

from __future__ import annotations

from typing import List, Sequence

from fedmq.shared.extras import require
from fedmq.shared.topicmap import Privacy


class Accountant:
    """Composes the rounds so far; ``epsilon()`` at the configured delta."""

    def __init__(self, privacy: Privacy) -> None:
        rdp = require("dp_accounting.rdp", "fedmq-coordinator", "dp", "differential privacy (strategy.privacy)")
        self.privacy = privacy
        self.accountant = rdp.RdpAccountant()

    def event(self, population: int, selected: int) -> List[float]:
        """[sampling rate, noise multiplier] of a round that selected ``selected`` of ``population`` online
        nodes. The rate is 1 when every node takes part, and with local DP, where each node's own noise
        protects it whoever else is in."""
        central = self.privacy.mode == "central" and 0 < selected < population
        return [selected / population if central else 1.0, self.privacy.noise_multiplier]

    def compose(self, event: Sequence[float]) -> float:
        """Account one round given as ``event()`` made it (also a checkpoint's); returns epsilon so far."""
        import dp_accounting  # present: the constructor required it

        rate, noise = event
        dp_event = dp_accounting.GaussianDpEvent(noise)
        if rate < 1.0:
            dp_event = dp_accounting.PoissonSampledDpEvent(rate, dp_event)
        self.accountant.compose(dp_event)
        return self.epsilon()

    def epsilon(self) -> float:
        """Epsilon spent so far at the configured delta (inf without noise)."""
        if self.privacy.noise_multiplier == 0:
            return float("inf")
        return float(self.accountant.get_epsilon(self.privacy.delta))
