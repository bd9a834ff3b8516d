"""Protocol drivers: one per family, each over a :class:`dataowner.port.WorkerPort`.

* :mod:`.kmeans` -- plaintext KMeans, NNC and DBSNNC (one command each);
* :mod:`.secure_kmeans` -- SKMeans, DBSKMeans and their CKKS variants: one round loop,
  parameterised by :class:`.secure_kmeans.Scheme`;
* :mod:`.pqc_kmeans` -- the labels-only CKKS k-means;
* :mod:`.classification` -- KNN, SKNN and PQC SKNN;
* :mod:`.regression` -- LR and PPLR;
* :mod:`.options` -- the option groups several of them share (built by the facade's forwarding).

:class:`dataowner.client.DataOwnerClient` is the public facade over them.
"""

from dataowner.drivers.base import DriverConfig

__all__ = ["DriverConfig"]
