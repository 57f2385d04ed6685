"""Convergence of fine-tuning from pre-trained weights versus from scratch (Pu et al., 2023).

Two SQL views, defined over the store's ``runs`` and ``curves`` tables in every DuckDB
connection the store opens (so ``tbench results query`` and ``Store.query`` see them):

``convergence``
    one row per fine-tuning style run (``finetune``, ``lp_ft``, ``scratch``) with a curve:
    ``epochs``, ``final_val_score`` (the headline metric after the last epoch of the selected
    learning rate), ``epochs_to_95`` (the first epoch whose validation score reaches 95% of
    that final score; 0 where the curve starts with the starting point, as LP-FT's does, and
    the start is already there), ``final_train_loss``, ``best_val_score`` and the run's coordinates.
``convergence_gaps``
    one row per (pre-trained run, epoch) that has a ``scratch`` run of the same backbone, set,
    shot count and evaluation seed at that epoch: ``val_score`` and ``train_loss`` of both and
    the relative gaps

        rel_acc_gap  = (val_score - scratch_val_score) / scratch_val_score
        rel_loss_gap = (train_loss - scratch_train_loss) / scratch_train_loss

    (null where the scratch value is 0). A positive accuracy gap and a negative loss gap mean the
    pre-trained start is ahead at that epoch.

Curves are those of the learning rate each run selected on validation, so both sides of a gap
are their protocol's own best recipe, epoch by epoch.
"""

from __future__ import annotations

import pandas as pd

TRAINING_PROTOCOLS = ("finetune", "lp_ft", "scratch")

VIEWS: dict[str, str] = {
    "convergence": """
WITH c AS (
    SELECT key, epoch, val_score, train_loss,
           max(epoch) OVER (PARTITION BY key) AS last_epoch,
           max(val_score) OVER (PARTITION BY key) AS best_val_score
    FROM curves
    WHERE protocol IN ('finetune', 'lp_ft', 'scratch')
),
f AS (
    SELECT key, any_value(val_score) AS final_val_score, any_value(train_loss) AS final_train_loss,
           any_value(last_epoch) AS epochs, any_value(best_val_score) AS best_val_score
    FROM c WHERE epoch = last_epoch GROUP BY key
),
e AS (
    SELECT c.key, min(c.epoch) AS epochs_to_95
    FROM c JOIN f USING (key)
    WHERE c.val_score >= 0.95 * f.final_val_score
    GROUP BY c.key
)
SELECT r.key, r.protocol, r.method, r.source, r.pretrain_size, r.backbone, r.pretrain_key, r.checkpoint_epoch,
       r.downstream, r.shots, r.eval_seed, r.metric, f.epochs, e.epochs_to_95, f.final_val_score,
       f.best_val_score, f.final_train_loss, r.score AS test_score
FROM f JOIN e USING (key) JOIN runs r USING (key)
WHERE r.status = 'ok'
""",
    "convergence_gaps": """
WITH p AS (
    SELECT r.key, r.protocol, r.method, r.source, r.pretrain_size, r.backbone, r.pretrain_key,
           r.checkpoint_epoch, r.downstream, r.shots, r.eval_seed, c.epoch, c.val_score, c.train_loss
    FROM runs r JOIN curves c USING (key)
    WHERE r.status = 'ok' AND r.protocol IN ('finetune', 'lp_ft')
),
s AS (
    SELECT r.key, r.backbone, r.downstream, r.shots, r.eval_seed, c.epoch, c.val_score, c.train_loss
    FROM runs r JOIN curves c USING (key)
    WHERE r.status = 'ok' AND r.protocol = 'scratch'
)
SELECT p.*, s.key AS scratch_key, s.val_score AS scratch_val_score, s.train_loss AS scratch_train_loss,
       CASE WHEN s.val_score = 0 THEN NULL ELSE (p.val_score - s.val_score) / s.val_score END AS rel_acc_gap,
       CASE WHEN s.train_loss = 0 THEN NULL ELSE (p.train_loss - s.train_loss) / s.train_loss END AS rel_loss_gap
FROM p JOIN s ON p.backbone = s.backbone AND p.downstream = s.downstream
     AND p.shots IS NOT DISTINCT FROM s.shots AND p.eval_seed = s.eval_seed AND p.epoch = s.epoch
""",
}


def define_views(con) -> None:
    """Create the convergence views on a DuckDB connection that already has ``runs`` and ``curves``."""
    for name, sql in VIEWS.items():
        con.execute(f'CREATE VIEW "{name}" AS {sql}')


def convergence(store) -> pd.DataFrame:
    """The ``convergence`` view of ``store`` (a :class:`results.store.Store`) as a DataFrame."""
    return store.query("SELECT * FROM convergence ORDER BY downstream, protocol, method, shots, eval_seed")


def convergence_gaps(store) -> pd.DataFrame:
    """The ``convergence_gaps`` view of ``store`` as a DataFrame."""
    return store.query("SELECT * FROM convergence_gaps ORDER BY downstream, protocol, method, shots, eval_seed, epoch")
