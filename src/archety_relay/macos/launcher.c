/* Archety Relay's app executable: the one identity macOS asks about.
 *
 * It SPAWNS the relay's Python as a child and stays alive as its parent. It must not exec: the
 * process image would become Python again and macOS would attribute Full Disk Access and
 * Automation to Python.app (nbramia/LifeOS#76). A child keeps its parent as its "responsible
 * process" for TCC unless the parent disclaims it (ghostty#9263, skhd.zig#44), so the relay and
 * its osascript children are judged as this bundle.
 *
 * argv[1..] is the command to run (the venv's python -m archety_relay run). SIGTERM (launchctl
 * bootout / stop), SIGHUP (reload) and SIGINT are passed on to the child; the launcher exits with
 * the child's status, or 128 + the signal that killed it, so launchd's KeepAlive sees a failure
 * as a failure.
 */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static volatile sig_atomic_t child_pid = 0;
static volatile sig_atomic_t pending = 0;

static void forward(int sig) {
    if (child_pid > 0) {
        kill((pid_t)child_pid, sig);
    } else {
        pending = sig; /* arrived before the child existed: sent right after the spawn */
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROGRAM [ARGS...] (started by the LaunchAgent)\n", argv[0]);
        return 64;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = forward;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGHUP, &action, NULL);
    sigaction(SIGINT, &action, NULL);

    pid_t pid;
    int failed = posix_spawn(&pid, argv[1], NULL, NULL, &argv[1], environ);
    if (failed != 0) {
        fprintf(stderr, "%s: cannot start %s: %s\n", argv[0], argv[1], strerror(failed));
        return 127;
    }
    child_pid = pid;
    if (pending) {
        kill(pid, pending);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            return 70;
        }
    }
    if (WIFEXITED(status)) {
        return WEXITSTATUS(status);
    }
    if (WIFSIGNALED(status)) {
        return 128 + WTERMSIG(status);
    }
    return 70;
}
