#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static int lsock;
static struct sockaddr_in la;

static void *io(void *arg) {
    (void)arg;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&la, sizeof la)) { perror("connect"); exit(2); }
    char buf[512]; memset(buf, 'y', sizeof buf);
    while (!stop) {
        if (write(c, buf, sizeof buf) != (ssize_t)sizeof buf) { perror("write"); exit(3); }
        int got = 0;
        while (got < (int)sizeof buf) { ssize_t r = read(c, buf + got, sizeof buf - got); if (r <= 0) exit(4); got += r; }
        int d = dup(c); close(d);                 /* table writes too */
    }
    close(c);
    return NULL;
}

static void *echo(void *arg) {
    int s = (int)(long)arg; char buf[4096];
    for (;;) { ssize_t r = recv(s, buf, sizeof buf, 0); if (r <= 0) break; if (send(s, buf, r, 0) != r) break; }
    close(s);
    return NULL;
}

int main(int argc, char **argv) {
    int forks = argc > 1 ? atoi(argv[1]) : 300, threads = 4, hung = 0;
    socklen_t len = sizeof la;
    la.sin_family = AF_INET; la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lsock = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(lsock, (struct sockaddr *)&la, sizeof la) || listen(lsock, 16) || getsockname(lsock, (struct sockaddr *)&la, &len)) return 2;
    pthread_t t[8], e[8];
    for (int i = 0; i < threads; i++) {
        pthread_create(&t[i], NULL, io, NULL);
        int s = accept(lsock, NULL, NULL);
        pthread_create(&e[i], NULL, echo, (void *)(long)s);
    }
    int sp[2]; socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
    for (int i = 0; i < forks; i++) {
        pid_t p = fork();
        if (p == 0) {
            int d = dup(sp[1]); close(d);
            if (write(sp[1], "c", 1) != 1) _exit(5);
            _exit(0);
        }
        if (p < 0) { perror("fork"); return 6; }
        struct timespec ts = {0, 1000000}; int status = 0, waited = 0, h = 0;
        while (waitpid(p, &status, WNOHANG) == 0) {
            nanosleep(&ts, NULL);
            if (++waited > 10000) { kill(p, SIGKILL); waitpid(p, &status, 0); hung++; h = 1; break; }
        }
        char c; if (!h && (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || read(sp[0], &c, 1) != 1)) return 7;
    }
    stop = 1;
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < threads; i++) pthread_join(e[i], NULL);
    printf("forks %d hung %d\n", forks, hung);
    return hung ? 1 : 0;
}
