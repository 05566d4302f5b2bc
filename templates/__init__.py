"""The notebook templates (teacher, iterate, inference), installed with kaggle_tli as `kaggle_tli.templates`.

Find them with `importlib.resources.files("kaggle_tli.templates")`, or render one into a ready-to-push
Kaggle kernel folder with `kaggle-tli kernel init TEMPLATE ...` (`kaggle_tli.render_kernel`).
"""
