# Sourced by scripts/bench.sh and scripts/build-pgo.sh: a canned S3 endpoint,
# nginx on loopback (pinned to core 1) answering every request at once (an
# empty bucket list for GET /, 200 with an ETag for everything else).
#   canned_s3_start WORKDIR   sets CANNED_PORT, CANNED_URL and CANNED_PID
canned_s3_start() {
  local w=$1
  mkdir -p "$w/tmp"
  CANNED_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  CANNED_URL=http://127.0.0.1:$CANNED_PORT
  cat > "$w/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $w/nginx.pid;
error_log $w/error.log warn;
worker_rlimit_nofile 200000;
events { worker_connections 150000; }
http {
  access_log off;
  client_body_temp_path $w/tmp; proxy_temp_path $w/tmp; fastcgi_temp_path $w/tmp;
  uwsgi_temp_path $w/tmp; scgi_temp_path $w/tmp;
  client_max_body_size 10m;
  client_body_buffer_size 64k;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  server {
    listen 127.0.0.1:$CANNED_PORT backlog=65535;
    location = / {
      default_type application/xml;
      return 200 '<?xml version="1.0" encoding="UTF-8"?><ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>bench</ID></Owner><Buckets></Buckets></ListAllMyBucketsResult>';
    }
    location / {
      add_header ETag '"0f343b0931126a20f133d67c2b018a3b"' always;
      return 200 '';
    }
  }
}
CONF
  taskset -c 1 /usr/sbin/nginx -c "$w/nginx.conf" -p "$w" -e "$w/error.log" &
  CANNED_PID=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$CANNED_PORT") 2>/dev/null && return 0; sleep 0.1; done
  echo "canned S3 endpoint (nginx) did not start; see $w/error.log" >&2
  return 1
}
