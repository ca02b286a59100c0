"""Import adapters: other leaderboards' per-question results -> a benchroute benchmark directory.

Each adapter reads one foreign format into a long table (task, item_id, input, model, score) and
hands it to :func:`benchroute.data.adapters.table.build_benchmark`, which makes the score matrix
complete and reports what it dropped. Each returns a summary dict (counts, output path, drops).
"""

from benchroute.data.adapters.helm import import_helm
from benchroute.data.adapters.lmeval import import_lmeval
from benchroute.data.adapters.table import import_table

__all__ = ["import_helm", "import_lmeval", "import_table"]
