"""How updates become the next global model: the topic map's ``strategy`` section.

* ``components``: ``Param`` (a component's parameter) and ``Registry`` (components by name, built in or
  plugged in through entry points).
* ``rule`` and ``rules/``: Byzantine-robust rules over every update of a round, one module each (median,
  trimmed mean, Krum, Multi-Krum).
* ``optimizer`` and ``optimizers/``: the server optimizer applied to the aggregated change, one module each
  (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad).
* ``check``: the topic map's strategy checked against the installed components.
* ``bounds`` and ``clipping``: the round's weight cap and norm bound, and clipping a change to it.
* ``privacy``: Gaussian noise for client-level differential privacy and its accountant.
* ``vectors``: a model's named tensors as one flat vector and back.
"""
