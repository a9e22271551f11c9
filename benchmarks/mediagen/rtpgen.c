/*
 * rtpgen: RTP load generator for `harness bench` (media relay rounds).
 *
 *   rtpgen SPEC_FILE SECONDS [PPS]
 *
 * SPEC_FILE has one line per bidirectional stream:
 *   LOCAL_PORT_A LOCAL_PORT_B RELAY_IP_FOR_A RELAY_PORT_FOR_A RELAY_IP_FOR_B RELAY_PORT_FOR_B
 * Endpoint A (127.0.0.1:LOCAL_PORT_A) sends to the relay port given to A, which must forward to B,
 * and the other way round. Every stream sends PPS (50) packets/s per direction, streams spread
 * evenly over the packet interval (1 ms slots), RTP header + 160 bytes payload (G.711 20 ms).
 * The payload carries the send time (CLOCK_REALTIME), so the receiver measures the relay's added
 * one-way latency against the kernel's receive time of each packet (SO_TIMESTAMPNS), and a run id:
 * packets of an earlier run that a relay still delivers (its backlog, or sessions it keeps after
 * the delete) are counted as stale, not as received.
 *
 * One thread, and as little CPU as it can take from the relay it measures (they share the cores):
 * it sleeps until each slot (clock_nanosleep, no spinning), sends the slot's packets grouped per
 * socket (one sendmmsg per socket), then reads whatever arrived (epoll_wait without waiting,
 * recvmmsg). It never sleeps in a receive, so the relay's sends do not wake it up: one wake-up per
 * slot, whatever the packet rate. Latency comes from the kernel's receive timestamps, so reading
 * once per slot does not add to it.
 *
 * Prints one JSON object: packets sent/received, loss, latency p50/p99 (ms), streams that lost
 * more than 0.5%, the generator's own CPU seconds, and how late the send schedule ran.
 * Loopback only: it binds 127.0.0.1 and sends only to the addresses in SPEC_FILE.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PKT_LEN 172            /* 12 RTP header + 160 payload */
#define BATCH 64
#define HIST_US 10             /* histogram resolution, microseconds */
#define HIST_N 100000          /* up to 1 s */

struct stream {
    int fd_a, fd_b;
    struct sockaddr_in to_relay_a, to_relay_b;
    uint16_t seq;
    uint64_t recv;
};

struct endpoint { int port; int fd; };

static struct stream *streams;
static int nstreams;
static struct endpoint *eps;
static int neps;
static uint64_t hist[HIST_N + 1];
static uint64_t sent, received, late_slots, send_errors, stale, send_calls, recv_calls, wakeups;
static uint32_t run_id;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* wall clock: the send time in the payload, compared with SO_TIMESTAMPNS (CLOCK_REALTIME) */
static uint64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int endpoint_fd(int port) {
    for (int i = 0; i < neps; i++)
        if (eps[i].port == port) return eps[i].fd;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    int sz = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof sz) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof sz) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0) { perror("SO_TIMESTAMPNS"); exit(2); }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "bind 127.0.0.1:%d: %s\n", port, strerror(errno));
        exit(2);
    }
    eps = realloc(eps, sizeof *eps * (size_t)(neps + 1));
    eps[neps].port = port;
    eps[neps].fd = fd;
    neps++;
    return fd;
}

static void addr(struct sockaddr_in *sa, const char *ip, int port) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &sa->sin_addr) != 1 || ntohl(sa->sin_addr.s_addr) >> 24 != 127) {
        fprintf(stderr, "relay address must be IPv4 loopback, got %s\n", ip);
        exit(2);
    }
}

static void load_spec(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    int pa, pb, ra, rb, cap = 0;
    char ia[64], ib[64];
    while (fscanf(f, "%d %d %63s %d %63s %d", &pa, &pb, ia, &ra, ib, &rb) == 6) {
        if (nstreams == cap) {
            cap = cap ? cap * 2 : 256;
            streams = realloc(streams, sizeof *streams * (size_t)cap);
        }
        struct stream *s = &streams[nstreams++];
        memset(s, 0, sizeof *s);
        s->fd_a = endpoint_fd(pa);
        s->fd_b = endpoint_fd(pb);
        addr(&s->to_relay_a, ia, ra);
        addr(&s->to_relay_b, ib, rb);
    }
    fclose(f);
    if (!nstreams) { fprintf(stderr, "no streams in %s\n", path); exit(2); }
}

static struct mmsghdr out_msgs[BATCH];
static struct iovec out_iov[BATCH];
static unsigned char out_buf[BATCH][PKT_LEN];
static int out_n, out_fd = -1;

static void flush_out(void) {
    int done = 0;
    while (done < out_n) {
        int r = sendmmsg(out_fd, out_msgs + done, (unsigned)(out_n - done), 0);
        send_calls++;
        if (r <= 0) { send_errors += (uint64_t)(out_n - done); break; }
        done += r;
    }
    sent += (uint64_t)out_n;
    out_n = 0;
}

/* queue one packet; consecutive packets from the same socket go out in one sendmmsg */
static void queue(int fd, struct sockaddr_in *to, int i, int dir, uint16_t seq, uint32_t tick) {
    if (out_n && (fd != out_fd || out_n == BATCH)) flush_out();
    out_fd = fd;
    unsigned char *p = out_buf[out_n];
    uint32_t ts = tick * 160u, ssrc = (uint32_t)i * 2u + (uint32_t)dir, idx = (uint32_t)i;
    uint64_t t = wall_ns();
    p[0] = 0x80; p[1] = 0;
    p[2] = (unsigned char)(seq >> 8); p[3] = (unsigned char)seq;
    memcpy(p + 4, &ts, 4); memcpy(p + 8, &ssrc, 4);
    memcpy(p + 12, &t, 8); memcpy(p + 20, &idx, 4); memcpy(p + 24, &run_id, 4);
    memset(p + 28, 0xd5, PKT_LEN - 28);
    out_iov[out_n].iov_base = p;
    out_iov[out_n].iov_len = PKT_LEN;
    memset(&out_msgs[out_n], 0, sizeof out_msgs[out_n]);
    out_msgs[out_n].msg_hdr.msg_iov = &out_iov[out_n];
    out_msgs[out_n].msg_hdr.msg_iovlen = 1;
    out_msgs[out_n].msg_hdr.msg_name = to;
    out_msgs[out_n].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
    out_n++;
}

/* the packets of one slot: every stream i with i % slots == slot, both directions, ordered by
 * socket so that each socket's packets go out in one sendmmsg */
struct pkt_ref { int fd; int stream; int dir; };
static struct pkt_ref **slot_pkts;     /* per slot, sorted by socket */
static int *slot_npkts;

static int by_socket(const void *x, const void *y) {
    const struct pkt_ref *a = x, *b = y;
    if (a->fd != b->fd) return a->fd < b->fd ? -1 : 1;
    if (a->stream != b->stream) return a->stream < b->stream ? -1 : 1;
    return a->dir - b->dir;
}

static void plan_slots(int slots) {
    slot_pkts = calloc((size_t)slots, sizeof *slot_pkts);
    slot_npkts = calloc((size_t)slots, sizeof *slot_npkts);
    for (int slot = 0; slot < slots; slot++) {
        int n = 0;
        slot_pkts[slot] = malloc(sizeof **slot_pkts * (size_t)(2 * (nstreams / slots + 1)));
        for (int i = slot; i < nstreams; i += slots)
            for (int dir = 0; dir < 2; dir++)
                slot_pkts[slot][n++] = (struct pkt_ref){dir ? streams[i].fd_b : streams[i].fd_a, i, dir};
        qsort(slot_pkts[slot], (size_t)n, sizeof **slot_pkts, by_socket);
        slot_npkts[slot] = n;
    }
}

static void send_slot(int slot, int slots, uint32_t tick) {
    for (int k = 0; k < slot_npkts[slot]; k++) {
        struct pkt_ref *r = &slot_pkts[slot][k];
        struct stream *s = &streams[r->stream];
        queue(r->fd, r->dir ? &s->to_relay_b : &s->to_relay_a, r->stream, r->dir,
              (uint16_t)(s->seq + r->dir * 0x8000), tick);
    }
    if (out_n) flush_out();
    for (int i = slot; i < nstreams; i += slots) streams[i].seq++;
}

static void drain(int fd) {
    static struct mmsghdr msgs[BATCH];
    static struct iovec iov[BATCH];
    static unsigned char buf[BATCH][2048];
    static char ctl[BATCH][CMSG_SPACE(sizeof(struct timespec))];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = buf[i];
            iov[i].iov_len = sizeof buf[i];
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = ctl[i];
            msgs[i].msg_hdr.msg_controllen = sizeof ctl[i];
        }
        int r = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        recv_calls++;
        if (r <= 0) return;
        uint64_t t = wall_ns();
        for (int i = 0; i < r; i++) {
            uint64_t sent_at, at = t;
            uint32_t idx, rid;
            if (msgs[i].msg_len < 28) { stale++; continue; }
            memcpy(&rid, buf[i] + 24, 4);
            if (rid != run_id) { stale++; continue; }
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(c), sizeof ts);
                    at = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
                }
            memcpy(&sent_at, buf[i] + 12, 8);
            memcpy(&idx, buf[i] + 20, 4);
            received++;
            if (idx < (uint32_t)nstreams) streams[idx].recv++;
            uint64_t us = at > sent_at ? (at - sent_at) / 1000 : 0;
            uint64_t b = us / HIST_US;
            hist[b > HIST_N ? HIST_N : b]++;
        }
        if (r < BATCH) return;          /* the socket is empty now: no recvmmsg only to learn that */
    }
}

/* read every socket that has something, without waiting */
static void drain_ready(int ep) {
    struct epoll_event evs[256];
    int n;
    do {
        n = epoll_wait(ep, evs, 256, 0);
        for (int i = 0; i < n; i++) drain(evs[i].data.fd);
    } while (n == 256);
}

static double pct(double p) {
    uint64_t want = (uint64_t)((double)received * p / 100.0), acc = 0;
    for (int i = 0; i <= HIST_N; i++) {
        acc += hist[i];
        if (acc > want) return (double)i * HIST_US / 1000.0;
    }
    return (double)HIST_N * HIST_US / 1000.0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SPEC_FILE SECONDS [PPS]\n", argv[0]);
        return 2;
    }
    load_spec(argv[1]);
    run_id = (uint32_t)now_ns() ^ ((uint32_t)getpid() << 16);
    double seconds = atof(argv[2]);
    int pps = argc > 3 ? atoi(argv[3]) : 50;
    if (seconds <= 0 || seconds > 600 || pps <= 0 || pps > 1000) {
        fprintf(stderr, "SECONDS must be in (0, 600], PPS in (0, 1000]\n");
        return 2;
    }
    int ep = epoll_create1(0);
    for (int i = 0; i < neps; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = eps[i].fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, eps[i].fd, &ev);
    }
    uint64_t interval = 1000000000ull / (uint64_t)pps;
    int slots = (int)(interval / 1000000ull);            /* 1 ms slots */
    if (slots < 1) slots = 1;
    uint64_t slot_ns = interval / (uint64_t)slots;
    uint64_t total_slots = (uint64_t)(seconds * 1e9) / slot_ns;
    plan_slots(slots);
    uint64_t start = now_ns(), next = start;
    for (uint64_t k = 0; k < total_slots; k++) {
        send_slot((int)(k % (uint64_t)slots), slots, (uint32_t)(k / (uint64_t)slots));
        drain_ready(ep);
        next += slot_ns;
        uint64_t t = now_ns();
        if (t < next) {
            struct timespec until = {.tv_sec = (time_t)(next / 1000000000ull), .tv_nsec = (long)(next % 1000000000ull)};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {}
            wakeups++;
        } else if (t - next > interval) {
            late_slots++;
        }
    }
    double sent_for = (double)(now_ns() - start) / 1e9;
    uint64_t drain_until = now_ns() + 500000000ull;        /* 0.5 s for packets in flight */
    struct epoll_event evs[256];
    while (now_ns() < drain_until) {
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++) drain(evs[i].data.fd);
    }
    uint64_t per_stream = 0;
    int lossy = 0;
    for (int i = 0; i < nstreams; i++) {
        per_stream = (uint64_t)streams[i].seq * 2;           /* both directions */
        if (per_stream && (double)streams[i].recv < 0.995 * (double)per_stream) lossy++;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec
                 + ru.ru_stime.tv_usec / 1e6;
    printf("{\"streams\": %d, \"sent\": %llu, \"received\": %llu, \"send_errors\": %llu, "
           "\"seconds\": %.3f, \"offered_pps\": %.0f, \"nominal_pps\": %d, \"loss\": %.5f, "
           "\"lat_p50_ms\": %.2f, \"lat_p99_ms\": %.2f, \"streams_over_half_pct_loss\": %d, "
           "\"late_slots\": %llu, \"stale\": %llu, \"generator_cpu_s\": %.3f, \"sockets\": %d, "
           "\"send_calls\": %llu, \"recv_calls\": %llu, \"wakeups\": %llu}\n",
           nstreams, (unsigned long long)sent, (unsigned long long)received,
           (unsigned long long)send_errors, sent_for, (double)sent / sent_for, nstreams * pps * 2,
           sent ? 1.0 - (double)received / (double)sent : 0.0, received ? pct(50) : -1.0,
           received ? pct(99) : -1.0, lossy, (unsigned long long)late_slots, (unsigned long long)stale, cpu, neps,
           (unsigned long long)send_calls, (unsigned long long)recv_calls, (unsigned long long)wakeups);
    return 0;
}
