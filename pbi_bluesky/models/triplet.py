"""Triplet loss with online batch mining.

For anchor a, positive p (same label) and negative n (other label) the loss is
``max(0, d(a, p) - d(a, n) + margin)`` with Euclidean distances. Mining is done inside each
batch: ``"hard"`` takes, per anchor, the farthest positive and the closest negative
(batch-hard, Hermans et al. 2017); ``"semi-hard"`` takes, per anchor-positive pair, the
closest negative that is still farther than the positive (FaceNet, Schroff et al. 2015),
falling back to the hardest negative when none is.
"""

from __future__ import annotations

import torch

__all__ = ["pairwise_distances", "triplet_loss"]


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix (stable gradient at zero)."""
    sq = (emb.unsqueeze(1) - emb.unsqueeze(0)).pow(2).sum(-1)
    return torch.sqrt(sq + 1e-12)


def triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, mining: str = "semi-hard"
) -> torch.Tensor:
    """Return the mean triplet loss over the mined triplets of a batch (0 if none exist).

    Parameters
    ----------
    emb
        Embeddings of the batch, shape (n, dim).
    labels
        Triplet label of each embedding.
    margin
        Margin between positive and negative distances.
    mining
        ``"semi-hard"``: for each anchor-positive pair the nearest negative farther than
        the positive (the hardest negative where none is); ``"hard"``: each anchor's
        farthest positive and nearest negative.

    Raises
    ------
    ValueError
        For an unknown ``mining``.
    """
    dist = pairwise_distances(emb)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    if not pos_mask.any() or not neg_mask.any():
        return emb.sum() * 0.0
    inf = torch.tensor(float("inf"), device=emb.device)
    if mining == "hard":
        hardest_pos = torch.where(pos_mask, dist, -inf).max(1).values
        hardest_neg = torch.where(neg_mask, dist, inf).min(1).values
        valid = pos_mask.any(1) & neg_mask.any(1)
        losses = torch.relu(hardest_pos - hardest_neg + margin)[valid]
        return losses.mean()
    if mining != "semi-hard":
        raise ValueError(f"mining must be 'hard' or 'semi-hard', got {mining!r}")
    a_idx, p_idx = torch.nonzero(pos_mask, as_tuple=True)
    d_ap = dist[a_idx, p_idx]
    d_an = dist[a_idx]  # (n_pairs, batch)
    neg = neg_mask[a_idx]
    semi = neg & (d_an > d_ap.unsqueeze(1))
    semi_min = torch.where(semi, d_an, inf).min(1).values
    hard_min = torch.where(neg, d_an, inf).min(1).values
    chosen = torch.where(torch.isfinite(semi_min), semi_min, hard_min)
    return torch.relu(d_ap - chosen + margin).mean()
