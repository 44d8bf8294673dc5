"""The curious server's attack on one worker's update: the right start for the update at hand, then matching.

* one image, one local step: the closed-form square-CNN inversion (inversion.SquareCNNInversion);
* several images or local steps on ``crypto_cnn``: the batch inversion (batch.invert_batch);
* any other model: gradient matching from random images.

Every path ends with gradient matching against the worker's replayed local training, except the batch
inversion of an update whose images were split into several batches (the server does not know the split), and
all of it stops when ``AttackOptions.time_budget`` is spent.
"""

from __future__ import annotations

import time

import torch

from fed_core.attack.batch import invert_batch
from fed_core.attack.inversion import (
    HIGH,
    LOW,
    AttackOptions,
    AttackResult,
    GradientMatcher,
    ObservedUpdate,
    Progress,
    SquareCNNInversion,
    Trace,
    infer_labels,
    match_gradients,
)
from fed_core.attack.scores import scores, to_pixels
from fed_core.data.mnist import Mnist, load_mnist
from fed_core.models import CryptoCNN, build_model


def reconstruct(
    observed: ObservedUpdate,
    options: AttackOptions | None = None,
    progress: Progress | None = None,
    reference: torch.Tensor | None = None,
    public: Mnist | None = None,
) -> AttackResult:
    """Reconstruct the worker's images from what the server holds.

    ``reference`` (the true uint8 images, known only because the worker is simulated) is used for scores and
    never by the optimisation. ``public`` is the server's own data for the sign prior and the label counts
    (default: MNIST's test set, disjoint from every worker's training images). ``progress(step, total, images,
    metrics)`` follows every step with the current reconstruction in [0, 1].
    """
    options = options or AttackOptions()
    if options.optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"Unknown optimizer {options.optimizer!r}; choose adam or lbfgs.")
    if options.steps < 0 or options.sign_rounds < 1 or options.neighbours < 1 or options.time_budget <= 0:
        raise ValueError("steps must be >= 0, sign rounds and neighbours >= 1, the time budget positive.")
    model = build_model(observed.model)
    if observed.update.shape != observed.global_vector.shape:
        raise ValueError("The update and the global weights have different sizes.")
    if reference is not None and len(reference) != observed.num_examples:
        raise ValueError(f"{len(reference)} reference images for an update of {observed.num_examples} examples.")
    deadline = time.perf_counter() + options.time_budget
    public = public or load_mnist()
    labels = infer_labels(model, observed, public.test_images)
    matcher = GradientMatcher(model, observed, labels, options.tv_weight)
    structured = options.structure and isinstance(model, CryptoCNN)
    single = observed.num_examples == 1 and observed.local_steps == 1
    start_steps = (4 * options.sign_rounds if single else observed.num_examples) if structured else 0
    # Replaying several local steps needs the worker's split into batches, unknown when it used more than one.
    split_unknown = observed.settings.batch_size < observed.num_examples
    polish_steps = 0 if structured and split_unknown else options.steps  # see batch.py, step 5
    trace = Trace(matcher, start_steps + polish_steps, reference, progress)
    if structured and single:
        start = SquareCNNInversion.from_update(model, observed, public.test_images).run(
            options, labels[0], public.test_labels, trace
        )
        method = "square-CNN inversion + gradient matching"
    elif structured:
        done: set[int] = set()

        def report(images: torch.Tensor, n: int) -> None:
            done.add(n)
            trace(len(done), images, trace.mismatch(images))

        polish = polish_steps > 0
        start = invert_batch(model, observed, labels, options, public, deadline, report, polish)
        method = "batch square-CNN inversion" + (" + gradient matching" if polish else "")
    else:
        gen = torch.Generator().manual_seed(options.seed)
        start = LOW + (HIGH - LOW) * torch.rand((observed.num_examples, 1, 28, 28), generator=gen)
        method = "gradient matching"
    lr = options.lr / 10 if structured else options.lr  # a structured start is already close: small steps
    offset = trace.step
    best = match_gradients(
        matcher,
        start,
        polish_steps,
        lr,
        options.optimizer,
        lambda s, x, mismatch: trace(offset + s, x, mismatch),
        deadline,
    )
    if trace.step < trace.total:
        trace(trace.total, best, trace.mismatch(best))
    pixels = to_pixels(best)
    result = AttackResult(pixels, labels, method, time.perf_counter() - trace.started, trace.history)
    if trace.truth is not None:
        result.matched, result.psnr, result.ssim = scores(pixels, trace.truth)
    return result
