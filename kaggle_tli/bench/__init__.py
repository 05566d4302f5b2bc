"""Benchmarks anyone can rerun: each writes its results as CSV, a markdown table and a PNG into one folder.

    transfer     transfer.py     time and coverage per teacher -> student pair, next to iatransfer and an earlier
                                 engine (rivals.py), and the Fig. 7 similarity matrix (similarity.py)
    convergence  convergence.py  accuracy per step of students from each initialisation (paper Fig. 4)
    norm         norm.py         efficientnet_b0 -> b1 -> b2 with and without BatchNorm transfer (paper Fig. 5)
    teachers     teachers.py     one student from several teachers: TLI score vs convergence (rank correlation)
    overhead     overhead.py     time per step of kaggle-tli's training loop against a bare PyTorch loop
    precise      precise.py      precise validation's score against the refit's image count (precise_images)
    layout       layout.py       time per training step in NCHW against channels_last (TrainConfig.channels_last)
    quick        quick.py        the quick version of each, one after the other (`make bench`)
"""
