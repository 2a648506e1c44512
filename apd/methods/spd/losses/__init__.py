"""SPD's loss terms, one module each (docs/spd.md §1.4); `apd.methods.spd.naive` and `.fast` assemble a step."""

from apd.methods.spd.losses.faithfulness import faithfulness_loss
from apd.methods.spd.losses.importance import importance_minimality_loss
from apd.methods.spd.losses.reconstruction import divergence

__all__ = ["divergence", "faithfulness_loss", "importance_minimality_loss"]
