"""Airflow-side helpers of the recommendation pipeline: the DAG's Params schema and
a factory for its SparkSubmitOperator tasks. Airflow puts `plugins/` on sys.path."""
