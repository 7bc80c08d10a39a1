"""ShelfTally as Celery workers on a Redis broker.

The scan is a chain of three tasks with fixed names, each on its own queue so that vision runs
on GPU or CPU nodes and persistence next to the database::

    shelftally.ingest   (queue ``ingest``)  picture key -> decode, place, time, duplicate check
    shelftally.vision   (queue ``vision``)  detect, crop, classify (models loaded once per process)
    shelftally.persist  (queue ``db``)      one transaction: scan, observations, reconcile, alerts

Tasks carry a key into the picture store (:mod:`workers.fleet.image_store`), never pixels. Every
task is acknowledged late and requeued when its worker dies; a picture is counted once however
often its tasks run, because the scan row is unique on (picture sha256, location, capture time)
and the capture time is fixed when the picture is enqueued. See :mod:`workers.fleet.app` for
the delivery rules and :mod:`workers.fleet.deadletter` for messages that keep failing.
"""
