#include "page_ids.h"

#include <sys/mman.h>

#include <atomic>
#include <string>

namespace criusec {

struct PageIds::Shared {
	std::atomic<uint32_t> used;
	std::atomic<uint64_t> ids[kMax]; /* id + 1; 0 while a claim is being written */
};

PageIds::PageIds() noexcept
{
	void *p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p != MAP_FAILED)
		shm_ = new (p) Shared{}; /* zero-filled already: the atomics start at 0 */
}

PageIds::~PageIds()
{
	if (shm_)
		munmap(shm_, sizeof(Shared));
}

Status PageIds::claim(uint32_t id)
{
	if (!shm_)
		return Status::error(ENOMEM, "can't map the record of page image ids");
	uint32_t n = shm_->used.load();
	for (uint32_t i = 0; i < n && i < kMax; i++)
		if (shm_->ids[i].load() == uint64_t{ id } + 1)
			return Status::error(EEXIST, "page image " + std::to_string(id) +
							     " twice in this checkpoint (it would share its key with the other)");
	uint32_t slot = shm_->used.fetch_add(1);
	if (slot >= kMax)
		return Status::error(ENOSPC, "more than " + std::to_string(kMax) + " page images in this checkpoint");
	shm_->ids[slot].store(uint64_t{ id } + 1);
	return {};
}

} /* namespace criusec */
