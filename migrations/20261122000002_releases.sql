-- Releases of services whose containers Sluice runs ([services.docker]): the image and the
-- full configuration of every container (as the engine reported it), so a release can be
-- recreated exactly when its containers are gone.
CREATE TABLE IF NOT EXISTS releases (
    id              TEXT PRIMARY KEY,          -- the deployment's id, or SERVICE-initial-...
    service         TEXT NOT NULL,
    image           TEXT NOT NULL,             -- as asked (app:v2)
    image_id        TEXT NOT NULL,             -- what it resolved to (sha256:...)
    state           TEXT NOT NULL,             -- preparing, candidate, stable, retired, failed
    containers      TEXT NOT NULL,             -- JSON: each container's snapshot
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_service ON releases (service, updated_ms);
