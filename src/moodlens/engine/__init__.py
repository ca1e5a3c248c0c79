"""The engine: decode -> detect -> align -> classify -> explain/render, behind one `Analyzer`.

Imports nothing from the other rooms (training, jobs, web, cli) and nothing heavier than LiteRT, OpenCV,
Pillow and numpy; every shell (web app, CLI, batch, Spark) drives it through `moodlens.Analyzer`.
"""
