"""The live dashboards (Exhibitions and Safety), their SQL contract, and the Tableau outputs.

Optional parts: the web app needs requirements-dashboard.txt, the `.hyper` export
requirements-tableau.txt; the pipeline needs neither.
"""
