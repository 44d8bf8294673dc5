"""A curious server against an update made of several images (and several local steps) of ``crypto_cnn``.

Plain gradient matching stalls on a batch (about 7 dB for four images): every image adds its own 512 hidden
signs. The square CNN's layers after the convolution can instead be undone for the whole batch at once:

1. **Label counts** from the last bias gradient and the mean softmax over public digits
   (inversion.label_counts, after Wainakh et al. 2022).
2. **The hidden features of every image** (:class:`FeatureDecomposition`): fc1's weight gradient is
   sum_n d_n a_n^T, with a_n = u_n^2 the squared convolution output of image n, so every a_n lies in the span
   of its top N right singular vectors: a_n = V c_n, N x N unknowns. Everything after the convolution (d_n,
   the softmax, fc2's gradient) is a function of a_n and the label, so a small least-squares problem over c
   with random restarts from public digits finds all a_n (exactly for one local step, up to float error).
3. **Each image from its |u_n| = sqrt(a_n)**: the single-image square-CNN inversion (signs from public digits,
   box-constrained least squares), without the convolution gradient, which only the batch's sum gives.
4. **All images jointly** (:func:`refine_jointly`): given the signs, u_n = conv(x_n) + b for every image and
   the batch's conv weight gradient (a sum over images) are linear in the images. That is fewer equations
   than pixels for two images or more, so an L1 pull towards the background decides (a digit covers about a
   fifth of its image: compressed sensing); signs and images are updated in turn.
5. **Gradient matching** of the whole batch (inversion.match_gradients, the worker's local training replayed
   differentiably as in Dimitrov et al. 2022) polishes the images for the rest of the time budget.

With several local steps the fc1 weights move between steps, so step 2 is an approximation: its features are
those of the first step's model, close for the app's small learning rate. Step 5 is then skipped: the replay
needs to know which images went into which batch, which the server does not, and matching with a wrong split
pulled the images away (16 images in 4 steps: 12 of 32 at >= 20 dB with it, 16 of 32 without).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fed_core.attack.inversion import HIGH, LOW, AttackOptions, ObservedUpdate, SquareCNNInversion
from fed_core.data.mnist import Mnist, normalize
from fed_core.models import CryptoCNN
from fed_core.vocabulary import Params, model_params, unflatten

SOLVED = 1e-7  # 1 - cosine of the fc layers' gradients below which the features are taken as found
SPARSITY = 0.01  # weight of the L1 pull towards the background: a digit covers a fifth of its image
NEGATIVE_PENALTY = 10.0  # a_n = u_n^2 cannot be negative


class FeatureDecomposition:
    """Finds a_n = (conv output of image n)^2 for every image from the gradients of fc1 and fc2."""

    names = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")

    def __init__(self, params: Params, gradient: Params, labels: list[int]) -> None:
        self.w1, self.b1, self.w2, self.b2 = (params[name].double() for name in self.names)
        target = torch.cat([gradient[name].double().flatten() for name in self.names])
        self.target = target / target.norm().clamp(min=1e-300)
        self.labels = torch.tensor(labels)
        _, _, vh = torch.linalg.svd(gradient["fc1.weight"].double(), full_matrices=False)
        self.basis = vh[: len(labels)].T  # [512, N]: the span of the a_n

    def head_gradients(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat gradient of fc1 and fc2 for features ``a`` [N, 512], d = dL/dz1 [N, 128]), one mean-loss step."""
        z = a @ self.w1.T + self.b1
        hidden = z * z
        e = (torch.softmax(hidden @ self.w2.T + self.b2, 1) - F.one_hot(self.labels, 10)) / len(a)
        d = 2 * z * (e @ self.w2)
        flat = torch.cat([(d.T @ a).flatten(), d.sum(0), (e.T @ hidden).flatten(), e.sum(0)])
        return flat, d

    def loss(self, coefficients: torch.Tensor) -> torch.Tensor:
        a = coefficients @ self.basis.T
        flat, _ = self.head_gradients(a)
        mismatch = 1 - flat.dot(self.target) / flat.norm().clamp(min=1e-300)
        return mismatch + NEGATIVE_PENALTY * F.relu(-a).pow(2).sum() / a.pow(2).sum().clamp(min=1e-300)

    def fit(self, starts: Callable[[], torch.Tensor], deadline: float) -> tuple[torch.Tensor, float]:
        """Restarts from ``starts()`` (features [N, 512] of public digits) until solved or past ``deadline``.

        Returns the best features found (negative parts cut) and their mismatch.
        """
        best, best_loss = None, math.inf
        while best is None or (best_loss > SOLVED and time.perf_counter() < deadline):
            coefficients, value = self._descend(starts() @ self.basis)
            if math.isfinite(value) and value < best_loss:
                best, best_loss = coefficients, value
        return (best @ self.basis.T).clamp(min=0), best_loss

    def _descend(self, start: torch.Tensor) -> tuple[torch.Tensor, float]:
        """L-BFGS from ``start`` coefficients: (where it ended, its loss)."""
        coefficients = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [coefficients], max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-14
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            value = self.loss(coefficients)
            value.backward()
            return value

        opt.step(closure)
        return coefficients.detach(), self.loss(coefficients).item()


def refine_jointly(
    inversions: list[SquareCNNInversion], conv_gradient: torch.Tensor, x: torch.Tensor, deadline: float, iters: int
) -> torch.Tensor:
    """All images at once, flat [N, 784]: each image's u = conv(x) + b must match signs * |u| (signs from the
    current images), and together their conv weight gradients must add up to ``conv_gradient`` (the batch's, at
    the decomposition's scale). Box-constrained least squares by FISTA, matrix-free: the forward map is shared.
    """
    forward, bias = inversions[0].forward, inversions[0].bias
    magnitudes = torch.stack([inv.magnitude for inv in inversions])
    target = conv_gradient.flatten()
    weight = magnitudes.norm() / target.norm().clamp(min=1e-30)
    forward_norm = torch.linalg.matrix_norm(forward, 2) ** 2
    weight_l1 = magnitudes.norm() / magnitudes.shape[1] ** 0.5
    while time.perf_counter() < deadline:  # a round: signs from the images, then the images given the signs
        signs = torch.sign(x @ forward.T + bias)
        u = signs * magnitudes
        rows = weight * torch.stack([inv.gradient_rows(u[n]) for n, inv in enumerate(inversions)])  # [N, R, 784]
        lipschitz = 1.1 * (forward_norm + _largest_eigenvalue(rows))
        y, t, previous = x.clone(), 1.0, x
        for _ in range(iters):
            if time.perf_counter() > deadline:
                break
            forward_residual = y @ forward.T + bias - u
            gradient_residual = torch.einsum("nrj,nj->r", rows, y) - weight * target
            step = forward_residual @ forward + torch.einsum("nrj,r->nj", rows, gradient_residual)
            x_next = (y - (step + SPARSITY * weight_l1) / lipschitz).clamp(LOW, HIGH)
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = x_next + (t - 1) / t_next * (x_next - previous)
            previous, t = x_next, t_next
        x = previous
    return x


def _largest_eigenvalue(rows: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of M M^T for M = [rows_1 ... rows_N] ([R, N * 784]), by power iteration on [R]."""
    probe = torch.ones(rows.shape[1], dtype=rows.dtype)
    for _ in range(30):
        probe = torch.einsum("nrj,nsj,s->r", rows, rows, probe)
        value = probe.norm()
        probe = probe / value.clamp(min=1e-30)
    return value


class ImageTrace:
    """What SquareCNNInversion.run asks of its trace, for one image of a batch: a score. Progress is reported
    per finished image (by :func:`invert_batch`), as scoring the whole batch after every sign round would cost
    more than the round."""

    def __init__(self, inversion: SquareCNNInversion) -> None:
        self.inversion = inversion

    def mismatch(self, image: torch.Tensor) -> float:
        """Relative error of |conv(x) + b| against the |u| the decomposition found."""
        u = self.inversion.forward @ image.flatten() + self.inversion.bias
        target = self.inversion.magnitude
        return ((u.abs() - target).norm() / target.norm().clamp(min=1e-30)).item()

    def __call__(self, _step: int, _image: torch.Tensor, _mismatch: float) -> None:
        """Nothing to do between sign rounds."""


def invert_batch(
    model: CryptoCNN,
    observed: ObservedUpdate,
    labels: list[int],
    options: AttackOptions,
    public: Mnist,
    deadline: float,
    report: Callable[[torch.Tensor, int], None],
    polish: bool,
) -> torch.Tensor:
    """Steps 2 and 3 of the module's recipe: a start for gradient matching, normalised [N, 1, 28, 28].

    ``report(images, n)`` follows every change to image n. Of the time left before ``deadline``, the features
    get a quarter, the images one by one the next quarter, the joint refinement a third, and the rest is left
    for the gradient-matching polish if ``polish``, else also for the joint refinement.
    """
    params = unflatten(observed.global_vector, model_params(model))
    gradient = unflatten(-observed.update, params)
    decomposition = FeatureDecomposition(params, gradient, labels)
    by_label = [torch.nonzero(public.test_labels == y).flatten() for y in labels]

    def public_features() -> torch.Tensor:
        picks = torch.stack([pool[torch.randint(len(pool), (1,))][0] for pool in by_label])
        with torch.no_grad():
            u = F.conv2d(normalize(public.test_images[picks]), params["conv.weight"], params["conv.bias"], stride=3)
        return u.flatten(1).double().pow(2)

    started = time.perf_counter()
    budget = deadline - started
    features, _ = decomposition.fit(public_features, started + budget / 4)
    images_until = started + budget / 2
    flat, d = decomposition.head_gradients(features)
    images = torch.zeros(len(labels), 1, 28, 28)
    inversions = []
    for n, label in enumerate(labels):
        inversion = SquareCNNInversion(
            model, params, features[n].float().sqrt(), (d[n] @ decomposition.w1).float(), None, public.test_images
        )
        share = (images_until - time.perf_counter()) / (len(labels) - n)
        image = inversion.run(options, label, public.test_labels, ImageTrace(inversion), time.perf_counter() + share)
        images[n] = image.view(1, 28, 28)
        inversions.append(inversion)
        report(images, n)
    observed_head = torch.cat([gradient[name].double().flatten() for name in decomposition.names])
    scale = observed_head.dot(flat) / flat.dot(flat).clamp(min=1e-300)  # the update's unknown factor
    refined = refine_jointly(
        inversions,
        (gradient["conv.weight"] / scale).float(),
        images.flatten(1),
        started + (5 / 6 if polish else 1) * budget,
        300,
    )
    return refined.view_as(images)
