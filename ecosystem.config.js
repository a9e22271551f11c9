// pm2 process file: `pm2 start ecosystem.config.js`, cutover with
//   cp run.py run_stage0.py.bak && cp run_sippy.py run.py && pm2 restart ims-server
// The server is always run.py (whatever stage was copied over it); RTPProxy runs as a second app
// for stages 1 and 2 (stage 0 does not need it; the server also auto-starts one when
// RTPPROXY_AUTO_START=1 and nothing answers).
//
// Addresses, ports and paths are not edited here: put KEY=VALUE lines in `ims.env` next to this
// file (or name another file with IMS_ENV_FILE; the format is systemd's EnvironmentFile, see
// ims.env.example). Precedence: the environment pm2 is started from > the env file > the defaults
// below (the original server's). The MML token is read by the server from MML_TOKEN_FILE
// (config/mml.token, created root-only by scripts/setup.sh), so it never shows in `pm2 env`.
const fs = require("fs");
const path = require("path");
const root = __dirname;
const python = path.join(root, ".venv", "bin", "python");

const DEFAULTS = {
  SERVER_IP: "AUTO_DETECT",
  SERVER_PORT: "5060",
  LOCAL_NETWORK_CIDR: "192.168.0.0/16,10.0.0.0/8,172.16.0.0/12",
  RTPPROXY_UDP_HOST: "127.0.0.1",
  RTPPROXY_UDP_PORT: "7722",
  RTPPROXY_AUTO_START: "0",     // pm2 runs ims-rtpproxy below
  RTPPROXY_LISTEN: "0.0.0.0",   // address RTPProxy relays media on (its -l)
  RTP_PORT_MIN: "20000",
  RTP_PORT_MAX: "29999",
  USERS_FILE: "data/users.json",
  CDR_DIR: "CDR",
  LOG_DIR: "logs",
  LOG_LEVEL: "INFO",
  MML_HOST: "127.0.0.1",
  MML_PORT: "8888",
  MML_TOKEN_FILE: path.join(root, "config", "mml.token"),
};

// KEY=VALUE per line, '#' comments, optional "quotes" (the subset systemd's EnvironmentFile reads).
function readEnvFile(file) {
  const out = {};
  if (!fs.existsSync(file)) return out;
  for (const raw of fs.readFileSync(file, "utf8").split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith(";")) continue;
    const m = line.match(/^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/);
    if (!m) throw new Error(`${file}: not KEY=VALUE: ${line}`);
    let value = m[2];
    if (value.length >= 2 && (value[0] === '"' || value[0] === "'") && value.endsWith(value[0])) {
      value = value.slice(1, -1);
    }
    out[m[1]] = value;
  }
  return out;
}

const envFile = process.env.IMS_ENV_FILE || path.join(root, "ims.env");
const fromFile = readEnvFile(envFile);
const env = {};
for (const key of new Set([...Object.keys(DEFAULTS), ...Object.keys(fromFile)])) {
  const given = process.env[key];
  env[key] = given !== undefined && given !== "" ? given : (key in fromFile ? fromFile[key] : DEFAULTS[key]);
}

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
      env: env,                       // INFO to stdout (pm2 out log), warnings/errors to stderr
    },
    {
      name: "ims-rtpproxy",
      script: path.join(root, ".venv", "bin", "ims-rtpproxy"),
      interpreter: "none",
      args: ["-l", env.RTPPROXY_LISTEN, "-s", `udp:${env.RTPPROXY_UDP_HOST}:${env.RTPPROXY_UDP_PORT}`,
             "-m", env.RTP_PORT_MIN, "-M", env.RTP_PORT_MAX],
      cwd: root,
      autorestart: true,
    },
  ],
};
