#ifndef __CR_MEM_SNAP_H__
#define __CR_MEM_SNAP_H__

#include <stdbool.h>
#include <sys/types.h>

struct pstree_item;
struct vm_area_list;
struct parasite_ctl;
struct page_pipe;
struct page_xfer;

/*
 * Copy-on-write dump (--cow-dump): a task's private pages are
 * write-protected with a userfaultfd (synchronous mode) while it is frozen
 * and written once it runs again; a write to a page not yet saved waits in
 * the kernel until criu has saved it (see mem-snap.c).
 */

/*
 * Before the freeze of a copy-on-write dump in a userfaultfd chain: the
 * memory the copy while frozen of task pid will need, counted and populated
 */
extern void mem_snap_prepare(pid_t pid);
/*
 * 1: dump this task's pages copy-on-write (a thread of criu's starts
 * protecting them now); 0: frozen, as always; -1: error
 */
extern int mem_snap_task_start(struct pstree_item *item, struct vm_area_list *vmas, struct parasite_ctl *ctl);
/*
 * The task frozen, its pagemap in pp (which stays the caller's): what to
 * protect.  On success, xfer (open) is mem-snap's: the pages go there later.
 */
extern int mem_snap_task_protect(struct pstree_item *item, struct vm_area_list *vmas, struct page_pipe *pp,
				 struct page_xfer *xfer);
/*
 * Every task dumped, each parasite gone: nothing runs in the tree until it
 * is resumed, so criu's thread that protected the tasks stops, and criu
 * goes on single-threaded (setns() into a mount namespace, for the mounts
 * dumped next, refuses a process with threads)
 */
extern void mem_snap_tasks_dumped(void);
/*
 * Memory tracking asks for [start, end) of task pid, which this dump
 * registered: true, and criu leaves its pages protected once written and
 * hands the VMA back to tracking, the task stopped a moment, with the
 * pages written since the freeze (mem_track_take_back())
 */
extern bool mem_snap_hand_back(pid_t pid, unsigned long start, unsigned long end);
/* Tasks whose pages are still to be written once the tree runs again */
extern bool mem_snap_pending(void);
/* The tree frozen, nothing of criu's left in it: the protection done, copy what it missed */
extern int mem_snap_arm(void);
/* The tree runs again: write their pages, serving write faults meanwhile */
extern int mem_snap_write(void);
/* Drop whatever is left (a failed dump): the tasks' writes go on */
extern void mem_snap_fini(void);
/*
 * true: a copy-on-write dump was done (by a child of criu, then frozen if
 * the tasks lost a page it had not saved), its result in *ret; false: dump
 */
extern bool mem_snap_try_dump(int (*dump)(pid_t), pid_t pid, int *ret);
/*
 * A pre-dump's --pre-dump-mode when none was asked for: read where a dump
 * is copy-on-write (the tasks run while the pages are read), else splice
 */
extern void mem_snap_pre_dump_mode(void);

#endif /* __CR_MEM_SNAP_H__ */
