# Users in the old system's format, one JSON object per line, for
# `scripts/add_users config/users.example.jl` (or `rainforest users import`).
# Blank lines and lines starting with # are ignored.
#
# Fields: cloud_id (6 hex digits), user_email, user_pw, optional active
# (default true) and optional local {"host", "install_code"} for an
# EAGLE-200 read on the LAN instead of through the relay.
#
# These three are meters of `rainforest simulate` (ids a00000..., e-mail
# meter-<id>@sim.example, password pw-<id>), so the file works end to end
# against the simulator: `rainforest simulate --meters 3` and a pinger with
# relay_url = http://127.0.0.1:9445/cgi-bin/post_manager.
{"cloud_id": "a00000", "user_email": "meter-a00000@sim.example", "user_pw": "pw-a00000"}
{"cloud_id": "a00001", "user_email": "meter-a00001@sim.example", "user_pw": "pw-a00001"}
{"cloud_id": "a00002", "user_email": "meter-a00002@sim.example", "user_pw": "pw-a00002", "active": true}
