#!/usr/bin/env bash
# Run by the airflow-init service (docker-compose.yaml), as root, before `airflow db migrate` and
# before any other Airflow service starts:
#   1. the shared folders, owned by the uid every Airflow and Spark container runs as;
#   2. the secrets the Airflow services must share, generated once into the airflow-secrets volume;
#   3. the synthetic demo shop, when the default input does not exist yet.
set -euo pipefail

: "${AIRFLOW_UID:=50000}"
: "${AIRFLOW_HOME:?}" "${RECS_DATA_ROOT:?}" "${RECS_BUILD_DIR:?}" "${RECS_INPUT:?}"
: "${RECS_AIRFLOW_SECRETS_DIR:?}" "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"

owner="${AIRFLOW_UID}:0"

# chown where the file system allows it: some Docker Desktop file shares refuse, and there the
# containers can write anyway.
give() {
    chown "$@" 2>/dev/null || echo "airflow-init: warning: could not chown $*" >&2
}

echo "airflow-init: shared folders under ${RECS_DATA_ROOT}, owned by ${owner}"
# Only these folders, not their contents: on Linux, set AIRFLOW_UID to your own uid (docs/docker.md)
# so that files written by a local run and by the containers have the same owner.
shared=("${RECS_DATA_ROOT}" "${RECS_DATA_ROOT}/runs" "${RECS_DATA_ROOT}/published" "${RECS_DATA_ROOT}/embedding_cache"
        "${RECS_BUILD_DIR}" "${AIRFLOW_HOME}/logs")
mkdir -p "${shared[@]}" "${RECS_AIRFLOW_SECRETS_DIR}"
give "${owner}" "${shared[@]}"
chmod g+rwx "${shared[@]}" 2>/dev/null || true

echo "airflow-init: secrets in ${RECS_AIRFLOW_SECRETS_DIR}"
# The api-server signs and checks the tokens tasks use (jwt_secret), the scheduler mints them: all
# components must agree, so the keys are made once and read through AIRFLOW__..._CMD. A value set in
# .env (AIRFLOW__API_AUTH__JWT_SECRET, ...) takes precedence over these files.
python - <<'PY'
import base64
import json
import os
import secrets
from pathlib import Path

folder = Path(os.environ["RECS_AIRFLOW_SECRETS_DIR"])
makers = {
    "jwt_secret": lambda: secrets.token_urlsafe(48),
    "api_secret_key": lambda: secrets.token_urlsafe(48),
    "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
}
for name, make in makers.items():
    path = folder / name
    if not path.exists() or not path.read_text().strip():
        path.write_text(make())
        print(f"airflow-init: generated {path}")

# SimpleAuthManager user "admin": the password from .env when set; otherwise Airflow generates one on
# the first start of the api-server and keeps it in this file (and prints it in its log).
password = os.environ.get("AIRFLOW_ADMIN_PASSWORD", "")
if password:
    passwords_file = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    passwords_file.write_text(json.dumps({"admin": password}) + "\n")
    print(f"airflow-init: admin password from AIRFLOW_ADMIN_PASSWORD written to {passwords_file}")
PY
give -R "${owner}" "${RECS_AIRFLOW_SECRETS_DIR}"
chmod -R u+rwX,g+rwX,o-rwx "${RECS_AIRFLOW_SECRETS_DIR}"

if [ ! -e "${RECS_INPUT}" ]; then
    echo "airflow-init: no input at ${RECS_INPUT}: writing the synthetic demo shop there"
    python -m recs.synthetic --out "${RECS_INPUT}"
    give -R "${owner}" "${RECS_INPUT}"
fi
