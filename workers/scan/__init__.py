"""Where a picture is counted: the scan pipeline and the stages it joins.

A picture enters through :mod:`workers.ingest` (decode) and is counted here, in process or as the
Celery tasks of :mod:`workers.fleet`:

* :mod:`workers.scan.pipeline`: :class:`~workers.scan.pipeline.ScanPipeline`, one picture of one
  location in (decode, capture time, location, detect, crop, classify), counts, discrepancies and
  an evidence image out.
* :mod:`workers.scan.locate`: the location read from a location label (QR code / barcode) in the picture.
* :mod:`workers.scan.evidence`: the evidence image, every detected item boxed and named.
* :mod:`workers.scan.run`: the pipeline the settings describe, and a batch of picture files through it.
* :mod:`workers.scan.report`: rich tables of scan runs, counts and discrepancies.
* :mod:`workers.scan.grocery`: the same stages measured on the Grocery Store photos.

Nothing is imported here, so that importing one stage does not load the others.
"""
