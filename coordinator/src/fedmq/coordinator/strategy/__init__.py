"""How updates become the next global model: the topic map's ``strategy`` section.

* ``vectors``: a model's named tensors as one flat vector and back.
* ``clipping``: bound an update's change (norm clipping, and DP's sensitivity).
* ``robust``: Byzantine-robust rules over every update of a round (median, trimmed mean, Krum).
* ``server_opt``: the server optimizer applied to the aggregated change (FedAvg, FedAvgM, FedAdam, ...).
* ``privacy``: Gaussian noise for client-level differential privacy and its accountant.
"""
