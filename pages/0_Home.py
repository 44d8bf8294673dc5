"""Home: what federated learning and encrypted inference are, and where to try them."""

import streamlit as st

from ui.nav import in_frame

in_frame()
st.title("Private machine learning, live")
st.markdown(
    """
Watch a neural network learn to read handwritten digits **without anyone collecting the digits in one place**,
then ask it to read *your* digit **without it ever seeing what you drew**.

**Federated learning.** A *server* holds a shared model. Many *workers* (phones, hospitals, schools) each keep
their own private images. Every round, the server sends the current model to a random sample of workers;
each worker trains it on its own data and sends back only the change to the weights. The server averages
those updates, weighting each worker by how many examples it trained on, and the model gets better.
The images never leave the workers.

**Encrypted inference.** Once trained, the model can classify data it cannot read: with *secure multi-party
computation* the image and the weights are split into random-looking shares held by different parties, and
with *homomorphic encryption* the server computes directly on a ciphertext. Only the owner of the data can
read the answer.
"""
)

c1, c2, c3 = st.columns(3)
with c1:
    st.subheader("1 · Train")
    st.write("Pick workers and rounds, press Start, and watch accuracy climb and each worker's contribution.")
    st.page_link("pages/1_Train.py", label="Open Train", icon=":material/model_training:")
with c2:
    st.subheader("2 · Draw")
    st.write("Draw a digit; it is encrypted in your session before the model classifies it.")
    st.page_link("pages/2_Draw.py", label="Open Draw", icon=":material/draw:")
with c3:
    st.subheader("3 · Encrypted Test")
    st.write("Evaluate the model on the MNIST test set with both model and data encrypted.")
    st.page_link("pages/3_Encrypted_Test.py", label="Open Encrypted Test", icon=":material/lock:")

st.caption("Built with PyTorch, PySyft, Flower and TenSEAL.")
