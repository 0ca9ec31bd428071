"""The service's and the bulk job's own metrics, made with `ray.util.metrics` in the processes that
do the work (Serve replicas, bulk actors) and exported by Ray with its own: Prometheus text on each
node's metrics port (`ray.nodes()[i]["MetricsExportPort"]`), every name prefixed `ray_` as Ray does.

    raysegment_requests_total{route, model, status}       HTTP answers of the Serve app, by status code
    raysegment_request_seconds{route, model}               time in the replica, request in to answer out
    raysegment_queue_seconds{model}                        waiting for a forward pass (the batcher's queue)
    raysegment_forward_seconds{model}                      one forward pass of a batch
    raysegment_batch_size{model}                           images per forward pass
    raysegment_images_total{model}, raysegment_pixels_total{model}      images (PDF pages) and pixels segmented
    raysegment_engine{model, engine}                       1 for the engine each model runs on (set again at each
                                                           health check, so an idle replica keeps it)
    raysegment_bulk_inputs_total{status}                   bulk job inputs done / errors (rate(): per second)

Queries (docs/serving.md has more): `sum by (status) (rate(ray_raysegment_requests_total[1m]))`,
`histogram_quantile(0.99, sum by (le) (rate(ray_raysegment_request_seconds_bucket[5m])))`.
"""

import functools

SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64]


@functools.cache
def service():
    """The Serve app's metrics, made once per replica process."""
    from ray.util.metrics import Counter, Gauge, Histogram

    return _Metrics(
        requests=Counter("raysegment_requests", "HTTP answers of the Serve app", tag_keys=("route", "model", "status")),
        request_seconds=Histogram("raysegment_request_seconds", "Seconds in the replica from request to answer", SECONDS,
                                  tag_keys=("route", "model")),
        queue_seconds=Histogram("raysegment_queue_seconds", "Seconds an image waited for its forward pass", SECONDS,
                                tag_keys=("model",)),
        forward_seconds=Histogram("raysegment_forward_seconds", "Seconds of one forward pass of a batch", SECONDS,
                                  tag_keys=("model",)),
        batch_size=Histogram("raysegment_batch_size", "Images per forward pass", BATCH_SIZES, tag_keys=("model",)),
        images=Counter("raysegment_images", "Images (and PDF pages) segmented", tag_keys=("model",)),
        pixels=Counter("raysegment_pixels", "Pixels segmented (of the label maps returned)", tag_keys=("model",)),
        engine=Gauge("raysegment_engine", "1 for the engine each model runs on", tag_keys=("model", "engine")),
    )


@functools.cache
def bulk_inputs():
    """The bulk job's inputs counter, made once per actor process."""
    from ray.util.metrics import Counter

    return Counter("raysegment_bulk_inputs", "Bulk job inputs finished, by status (done, error)", tag_keys=("status",))


class _Metrics:
    def __init__(self, **metrics):
        self.__dict__.update(metrics)

    def segmented(self, model, masks, queued_s, forward_s):
        """One forward pass: its batch size and time, each image's wait, images and pixels."""
        tags = {"model": model}
        self.batch_size.observe(len(masks), tags)
        self.forward_seconds.observe(forward_s, tags)
        for waited in queued_s:
            self.queue_seconds.observe(waited, tags)
        self.images.inc(len(masks), tags)
        self.pixels.inc(sum(int(m.size) for m in masks), tags)
