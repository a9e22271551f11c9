// pm2 process file: `pm2 start ecosystem.config.js`, cutover with
//   cp run_sippy.py run.py && pm2 restart ims-server
// The server is always run.py (whatever stage was copied over it); RTPProxy runs as a second app
// for stages 1 and 2 (stage 0 does not need it; the server also auto-starts one when
// RTPPROXY_AUTO_START=1 and nothing answers).
const path = require("path");
const root = __dirname;
const python = path.join(root, ".venv", "bin", "python");

module.exports = {
  apps: [
    {
      name: "ims-server",
      script: path.join(root, "run.py"),
      interpreter: python,
      cwd: root,
      autorestart: true,
      max_restarts: 5,
      kill_timeout: 10000,           // SIGTERM: stop accepting, end media, flush CDR
      merge_logs: true,
      env: {
        SERVER_IP: "AUTO_DETECT",
        SERVER_PORT: "5060",
        LOCAL_NETWORK_CIDR: "192.168.0.0/16,10.0.0.0/8,172.16.0.0/12",
        RTPPROXY_UDP_HOST: "127.0.0.1",
        RTPPROXY_UDP_PORT: "7722",
        RTPPROXY_AUTO_START: "0",     // pm2 runs ims-rtpproxy below
        RTP_PORT_MIN: "20000",
        RTP_PORT_MAX: "29999",
        USERS_FILE: "data/users.json",
        CDR_DIR: "CDR",
        LOG_DIR: "logs",
        LOG_LEVEL: "INFO",
        MML_HOST: "127.0.0.1",
        MML_PORT: "8888",
      },
    },
    {
      name: "ims-rtpproxy",
      script: path.join(root, ".venv", "bin", "ims-rtpproxy"),
      interpreter: "none",
      args: "-l 0.0.0.0 -s udp:127.0.0.1:7722 -m 20000 -M 29999",
      cwd: path.join(root, "logs"),
      autorestart: true,
    },
  ],
};
