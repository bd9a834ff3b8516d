"""The chaos suite behind ``scripts/chaos.py``: a Rory cluster on separate (network-namespace) hosts.

* :mod:`scripts.chaos.net`: namespaces, one bridge namespace, veth links; entering a namespace;
* :mod:`scripts.chaos.procs`: nats-server and ``python -m worker run`` processes inside namespaces;
* :mod:`scripts.chaos.manager`: the Manager side (publish, collect Replies, count storage markers);
* :mod:`scripts.chaos.suite`: the faults, one run per (mode, fault), the table.
"""
