"""``ratio``: the paper's F = s / (s + t) for a sycophantic token s ("Apologies") and a
steadfast token t ("Yes").

Raw logits can be negative, which makes s / (s + t) meaningless (sign flips, division by
~0). We therefore use the two tokens' softmax probabilities restricted to the pair:
F = p_s / (p_s + p_t) = sigmoid(logit_s - logit_t), in (0, 1), higher = more
sycophantic. Scores are absolute changes of F (patched - reference)."""
from .base import TokenPairMetric


class Ratio(TokenPairMetric):
    name = "ratio"
    link = "sigmoid"
