"""The harstream dashboard: ``harstream dashboard`` (or ``streamlit run dashboard/app.py``).

The broker and topic prefix come from ``HARSTREAM_BROKER`` and ``HARSTREAM_PREFIX`` (see
dashboard.launch). Every session of this server process shares one MQTT subscriber.
"""

import streamlit as st

from dashboard.common import REFRESH_SECONDS, get_feed

# an emoji, drawn by the browser: a ":material/…:" page icon is fetched from fonts.gstatic.com (failing offline);
# the other material icons come from the font served with the app
st.set_page_config(page_title="harstream", page_icon="🏋️", layout="wide")

page = st.navigation([
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/device.py", title="Device", icon=":material/show_chart:", url_path="device"),
    st.Page("pages/drift.py", title="Drift and metrics", icon=":material/monitoring:", url_path="drift"),
    st.Page("pages/model.py", title="Model", icon=":material/model_training:", url_path="model"),
    st.Page("pages/label.py", title="Label", icon=":material/label:", url_path="label"),
])


@st.fragment(run_every=REFRESH_SECONDS * 2)
def connection() -> None:
    feed = get_feed()
    state = ":green[● connected]" if feed.connected else ":red[○ not connected]"
    st.caption(f"**harstream** · broker `{feed.broker}` {state} · prefix `{feed.prefix}`")


with st.sidebar:
    connection()
page.run()
