-- MLflow's basic-auth app keeps users and permissions in its own database (its migrations
-- would collide with the tracking store's in a shared one). POSTGRES_DB creates `mlflow`.
CREATE DATABASE mlflow_auth;
