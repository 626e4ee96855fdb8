#ifndef __CR_MEM_TRACK_H__
#define __CR_MEM_TRACK_H__

#include <stdbool.h>
#include <sys/types.h>

#include "int.h"

#include "images/inventory.pb-c.h"

struct pstree_item;
struct vm_area_list;
struct vma_area;
struct parasite_ctl;
struct page_region;

/*
 * Memory tracking with a userfaultfd in asynchronous write-protect mode
 * (mem_track_method() == MEM_TRACK_UFFD): one userfaultfd per task, made
 * in the task by the parasite, kept between two runs of criu by a holder
 * process (see mem-track.c).
 */

/* Why a VMA's pages can't be taken from the parent images */
enum {
	MEM_TRACKED = 0,
	MEM_UNTRACKED_TASK, /* no record for the task: new task, lost holder, exec */
	MEM_UNTRACKED_VMA,  /* VMA new, moved, resized, or not registered by us */
};

extern int mem_track_dump_start(InventoryEntry *parent_ie);
extern int mem_track_task_start(struct pstree_item *item, struct vm_area_list *vmas, struct parasite_ctl *ctl);
extern int mem_track_vma_state(struct pstree_item *item, struct vma_area *vma);
extern int mem_track_task_protect(struct pstree_item *item, struct vm_area_list *vmas, struct parasite_ctl *ctl);
/*
 * A copy-on-write snapshot borrows the VMAs tracking registered (their
 * marks of this pass read): [start, end) is unregistered from the task's
 * userfaultfd.  0, or -1 (not tracked, or the kernel refused).
 */
extern int mem_track_lend(pid_t pid, u64 start, u64 end);
/*
 * The snapshot written, the task stopped and [start, end) no longer
 * registered with the snapshot's userfaultfd: tracking registers it and
 * protects its pages but the written ones (sorted), which the next pass
 * dumps.  0; 1 if tracking did not want it; -1: the next pass dumps it all.
 */
extern int mem_track_take_back(pid_t pid, int pm, u64 start, u64 end, const struct page_region *written,
			       unsigned long nr);
/*
 * Before the freeze of a dump over a userfaultfd chain: the pages of task
 * pid written since the last pass (an estimate: the task runs), in VMAs
 * with under 1/share of them written (share 0: all).  0 without a chain.
 */
extern long mem_track_written(pid_t pid, unsigned int share);
/*
 * Before the freeze of a copy-on-write dump over a userfaultfd chain:
 * the tracked VMAs with at most 1/share of them unwritten are no longer
 * tracked (dumped in full, by this pass and the next).
 */
extern void mem_track_give_up(unsigned int share);
extern void mem_track_inventory(InventoryEntry *he, bool pre_dump);
extern int mem_track_dump_finish(int ret);
/*
 * criu's userfaultfds go.  With the last one (a chain's end) the kernel
 * clears every write-protect bit, a walk of all the tracked memory: call
 * it once the tasks are resumed or killed, not while they are frozen.
 */
extern void mem_track_release(void);
/*
 * UFFDIO_REGISTER_MODE_WP of [start, end) with uffd: the ioctl acts on the
 * userfaultfd's mm, whoever holds it.  The copy-on-write dump (mem-snap.c)
 * registers its synchronous ones the same way.
 */
extern int uffd_register_wp(int uffd, u64 start, u64 end);

/* criu's argv[1] when it runs as a holder (exec'd by a pre-dump) */
#define MEM_TRACK_HOLDER_ARG "__mem-track-holder"
extern int mem_track_holder_main(int argc, char **argv);

#endif /* __CR_MEM_TRACK_H__ */
