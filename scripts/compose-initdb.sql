-- compose.yaml: the postgres image creates the role and the `rewards` database from its
-- environment; MLflow's backend database is created here (scripts/postgres.sh does the same).
CREATE DATABASE mlflow OWNER rewards;
