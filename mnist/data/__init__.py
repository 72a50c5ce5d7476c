"""Stage 1 of a run, the data: the IDX format (`idx`), the files fetched and verified
(`fetch`), tensors and the validation split (`tensors`), batches (`batches`) and batched
augmentation on the device (`augment`). Configured by conf/dataset and conf/augmentation."""
