"""InfoNCE for CPC on recurrent beliefs (van den Oord et al. 2018; seed 000), every t and k in one pass.

For an anchor (t, b) and horizon k the prediction p = W_k c_{t,b} must pick out the true future latent
z_{t+k,b} among negatives: the other sequences' z_{t+k,b'} (`negatives="batch"`, the seed's choice) or
every latent of the batch, all times and sequences (`"batch_time"`).

    loss = mean over valid (t, b, k) of  -log softmax(p . candidates / temperature)[positive]

A pair (t, t+k) is valid when its anchor t is in range and no episode starts in (t, t+k]: the future of
another episode is not this belief's future, so such pairs are left out of the loss and of the accuracy.
The anchor range: `anchors="all"` takes every t with t + k < T for each k (all available pairs, so short
horizons get more anchors than long ones); `"common"` takes t < T - K for every k, seed 000's
`for t in range(T - horizon)`, so every horizon is averaged over the same anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cpcrl.checks import choice

NEGATIVES = ("batch", "batch_time")
ANCHORS = ("all", "common")


def valid_pairs(is_first: torch.Tensor, horizon: int, valid: torch.Tensor | None = None,
                anchors: str = "all") -> torch.Tensor:
    """bool [K, T, B]: t is an anchor of `anchors` and (t, t+k) stays inside one episode (and inside the
    valid steps, when given)."""
    choice("cpc.anchors", anchors, ANCHORS)
    T, B = is_first.shape
    starts = torch.cumsum(is_first.to(torch.int32), 0)  # episode index along time
    ok = is_first.new_zeros((horizon, T, B), dtype=torch.bool)
    for k in range(1, horizon + 1):  # K is small; each slice is a vector op over T x B
        ok[k - 1, : T - k] = starts[k:] == starts[: T - k]
        if valid is not None:
            ok[k - 1, : T - k] &= valid[k:].bool() & valid[: T - k].bool()
    if anchors == "common":
        ok[:, max(T - horizon, 0):] = False  # the seed's anchors t < T - K, the same for every k
    return ok


def infonce_loss(preds: torch.Tensor, z: torch.Tensor, is_first: torch.Tensor, negatives: str = "batch",
                 temperature: float = 1.0, valid: torch.Tensor | None = None, anchors: str = "all"):
    """preds [K, T, B, D] (prediction of z_{t+k+1} from c_t), z [T, B, D], is_first [T, B].

    Returns (loss, accuracy per horizon [K], number of valid pairs). With no valid pair the loss is 0
    (and still part of the graph), so a batch of short episodes adds nothing instead of NaN.
    """
    choice("cpc.negatives", negatives, NEGATIVES)
    K, T, B, D = preds.shape
    mask = valid_pairs(is_first, K, valid, anchors)
    if negatives == "batch":
        # Future latents aligned with their anchors: targets[k, t] = z[t + k + 1] (zeros past the end, masked).
        targets = torch.stack([F.pad(z[k + 1:], (0, 0, 0, 0, 0, k + 1)) for k in range(K)])
        logits = torch.einsum("ktbd,ktcd->ktbc", preds, targets) / temperature  # [K, T, B, B]
        labels = torch.arange(B, device=z.device).expand(K, T, B)
    else:
        logits = torch.einsum("ktbd,ncd->ktbnc", preds, z).reshape(K, T, B, T * B) / temperature
        t_idx = torch.arange(T, device=z.device).view(1, T, 1) + torch.arange(1, K + 1, device=z.device).view(K, 1, 1)
        labels = (t_idx.clamp(max=T - 1) * B + torch.arange(B, device=z.device).view(1, 1, B)).expand(K, T, B)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none").view(K, T, B)
    count = mask.sum()
    loss = (ce * mask).sum() / count.clamp(min=1)
    correct = (logits.argmax(-1) == labels) & mask
    accuracy = correct.sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)
    return loss, accuracy.detach(), int(count)
