"""Fast AdvUnlearn: AdvUnlearn's bi-level loop with a one-step inner attack on the sign of the gradient
(fast adversarial training; `attack_method: fast_at` in params.yaml erase.advunlearn_fast), the cheaper
variant AdvUnlearn's paper reports [Zhang et al., NeurIPS'24, Sec. 5].

The loop is `cdc.methods.advunlearn`'s; this module names the variant, so the erase stage imports it by name.
"""

from __future__ import annotations

from cdc.methods.advunlearn import NEEDS, Config, attack_trace, erase, train_advunlearn

__all__ = ["NEEDS", "Config", "attack_trace", "erase", "train_advunlearn"]
