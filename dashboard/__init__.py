"""The live dashboards (Exhibitions and Safety), their SQL contract, and the Tableau outputs.

Optional parts: the web app needs the `dashboard` extra, the `.hyper` export the `tableau`
extra; the pipeline needs neither.
"""

from pathlib import Path

VIEWS_FILE = Path(__file__).resolve().parent / "views.sql"
"""The reporting views and their rollups, applied on top of the pipeline's schema."""
