"""Support code shared by the tests and the benchmarks, never by the app: a quickly trained model
(``quick_model``) and a real ``streamlit run app.py`` driven by headless Chromium (``browser``, which needs the
dev requirements' selenium)."""
