"""The learning curves' names. MLflow's run page shows a section per metric prefix, in
alphabetical order: named by quantity, the curves (`acc`, `avg_loss`) come before the single
values (`best`, `test`, `time`), each holding train beside val."""

TRAIN_ACC = "acc/train"
VAL_ACC = "acc/val"
TRAIN_LOSS = "avg_loss/train"
VAL_LOSS = "avg_loss/val"
