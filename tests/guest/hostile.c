/*
 * A hostile guest for ivmm's hardening test (tests/tests/hardening.rs).
 * Runs as root in the L2 guest, statically linked, for SECONDS seconds:
 * random writes and reads on the COM1 and i8042 ports and the PCI
 * configuration ports, on every virtio device's PCI config space and BARs
 * (common config, notify, ISR, device config, MSI-X table and PBA), and
 * virtio queues set up over garbage descriptor tables, rings and addresses,
 * then kicked. The virtio drivers are unbound first so the kernel does not
 * fight us for the devices. At the end COM1's line settings are restored so
 * the guest can still report, and it prints HOSTILE-DONE with counts.
 *
 *   hostile SECONDS [SEED]
 *
 * What it never does: ask for a reset or power-off (i8042 0xF0-0xFF pulse
 * commands, the ACPI ports): those would end the test early, and ivmm
 * handling them is tested elsewhere.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_DEVS 8
#define MAX_BARS 6
#define PAGE 4096

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: reproducible from the seed printed at the start. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1DULL;
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

struct bar {
	volatile uint8_t *map;
	size_t len;
};

struct vdev {
	char path[300];
	int config_fd;
	struct bar bars[MAX_BARS];
	/* From the virtio vendor capabilities: bar index and offset. */
	int common_bar, notify_bar;
	uint64_t common_off, notify_off;
	uint32_t notify_mult;
};

static struct vdev devs[MAX_DEVS];
static int ndevs;

/* Physical address of our garbage pages (from /proc/self/pagemap). */
static uint8_t *garbage;
static uint64_t garbage_phys;
#define GARBAGE_PAGES 4

static unsigned long ops_port, ops_config, ops_bar, ops_queue;

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return 0;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return;
	if (write(fd, text, strlen(text)) < 0) {
		/* nothing bound, already gone: fine */
	}
	close(fd);
}

static uint64_t virt_to_phys(void *p)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t entry = 0;
	if (fd < 0)
		return 0;
	if (pread(fd, &entry, 8, ((uintptr_t)p / PAGE) * 8) != 8)
		entry = 0;
	close(fd);
	if (!(entry & (1ULL << 63)))
		return 0;
	return (entry & ((1ULL << 55) - 1)) * PAGE;
}

/* Walks the capability list for virtio's vendor capabilities. */
static void parse_caps(struct vdev *d)
{
	uint8_t cfg[256];
	if (pread(d->config_fd, cfg, sizeof(cfg), 0) != sizeof(cfg))
		return;
	uint8_t ptr = cfg[0x34] & 0xfc;
	for (int guard = 0; ptr && guard < 48; guard++) {
		if (ptr > 256 - 20)
			break;
		if (cfg[ptr] == 0x09) {
			uint8_t type = cfg[ptr + 3], bar = cfg[ptr + 4];
			uint32_t off;
			memcpy(&off, &cfg[ptr + 8], 4);
			if (type == 1) {
				d->common_bar = bar;
				d->common_off = off;
			} else if (type == 2) {
				d->notify_bar = bar;
				d->notify_off = off;
				memcpy(&d->notify_mult, &cfg[ptr + 16], 4);
			}
		}
		ptr = cfg[ptr + 1] & 0xfc;
	}
}

static void find_devices(void)
{
	DIR *dir = opendir("/sys/bus/pci/devices");
	struct dirent *e;
	if (!dir)
		return;
	while ((e = readdir(dir)) && ndevs < MAX_DEVS) {
		char path[300], buf[64];
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vendor", e->d_name);
		if (read_file(path, buf, sizeof(buf)) || strtoul(buf, 0, 16) != 0x1af4)
			continue;
		struct vdev *d = &devs[ndevs];
		memset(d, 0, sizeof(*d));
		d->common_bar = d->notify_bar = -1;
		snprintf(d->path, sizeof(d->path), "/sys/bus/pci/devices/%s", e->d_name);
		snprintf(path, sizeof(path), "%s/driver/unbind", d->path);
		write_file(path, e->d_name);
		snprintf(path, sizeof(path), "%s/enable", d->path);
		write_file(path, "1");
		snprintf(path, sizeof(path), "%s/config", d->path);
		d->config_fd = open(path, O_RDWR);
		if (d->config_fd < 0)
			continue;
		/* Memory decoding and bus mastering on. */
		uint16_t cmd = 0x6;
		if (pwrite(d->config_fd, &cmd, 2, 4) != 2) {
			/* keep going: the BARs may still be mapped */
		}
		parse_caps(d);
		for (int b = 0; b < MAX_BARS; b++) {
			struct stat st;
			snprintf(path, sizeof(path), "%s/resource%d", d->path, b);
			int fd = open(path, O_RDWR | O_SYNC);
			if (fd < 0)
				continue;
			if (fstat(fd, &st) == 0 && st.st_size > 0) {
				void *m = mmap(0, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
				if (m != MAP_FAILED) {
					d->bars[b].map = m;
					d->bars[b].len = st.st_size;
				}
			}
			close(fd);
		}
		ndevs++;
	}
	closedir(dir);
}

static void mmio_write(volatile uint8_t *p, int width, uint64_t v)
{
	switch (width) {
	case 1: *(volatile uint8_t *)p = v; break;
	case 2: *(volatile uint16_t *)p = v; break;
	case 4: *(volatile uint32_t *)p = v; break;
	default: *(volatile uint64_t *)p = v; break;
	}
}

static uint64_t mmio_read(volatile uint8_t *p, int width)
{
	switch (width) {
	case 1: return *(volatile uint8_t *)p;
	case 2: return *(volatile uint16_t *)p;
	case 4: return *(volatile uint32_t *)p;
	default: return *(volatile uint64_t *)p;
	}
}

static void attack_ports(void)
{
	static const uint16_t ports[] = {0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff,
					 0x60, 0x64, 0xcf8, 0xcfc, 0xcfd, 0xcfe, 0xcff};
	uint16_t port = ports[below(sizeof(ports) / sizeof(ports[0]))];
	uint32_t v = rnd();
	if (rnd() & 1) {
		(void)inb(port);
		if (port == 0xcf8 || port == 0xcfc)
			(void)inl(port);
	} else if (port == 0x64) {
		uint8_t c = v;
		if (c >= 0xf0 || c == 0xd1) /* pulse/reset and output-port commands */
			c = 0xaa;
		outb(c, port);
	} else if (port == 0xcf8 || port == 0xcfc) {
		outl(v, port);
	} else {
		outb(v, port);
	}
	ops_port++;
}

static void attack_config(struct vdev *d)
{
	uint8_t buf[8];
	uint64_t v = rnd();
	size_t len = 1u << below(3);
	off_t off = below(4096 / len) * len;
	memcpy(buf, &v, 8);
	if (rnd() & 1) {
		if (pread(d->config_fd, buf, len, off) < 0) {
			/* refused reads are fine */
		}
	} else if (pwrite(d->config_fd, buf, len, off) < 0) {
		/* refused writes are fine */
	}
	ops_config++;
}

static void attack_bar(struct vdev *d)
{
	int b = below(MAX_BARS);
	if (!d->bars[b].map)
		return;
	int width = 1 << below(4);
	size_t off = below(d->bars[b].len / width) * width;
	if (rnd() & 1)
		(void)mmio_read(d->bars[b].map + off, width);
	else
		mmio_write(d->bars[b].map + off, width, rnd());
	ops_bar++;
}

/* Fills our pages with descriptors, rings and indices that point anywhere. */
static void scramble_garbage(void)
{
	for (size_t i = 0; i < GARBAGE_PAGES * PAGE / 8; i++) {
		uint64_t v = rnd();
		switch (below(4)) {
		case 0: /* an address inside our pages */
			v = garbage_phys + below(GARBAGE_PAGES * PAGE);
			break;
		case 1: /* small numbers: lengths, indices, flags */
			v &= 0x0003000f0000ffffULL;
			break;
		default:
			break;
		}
		memcpy(garbage + i * 8, &v, 8);
	}
}

static uint64_t garbage_or_random_addr(void)
{
	switch (below(4)) {
	case 0: return rnd(); /* anywhere, mostly outside RAM */
	case 1: return below(1ULL << 36) & ~0xfULL;
	default: return garbage_phys + below(GARBAGE_PAGES) * PAGE / 2;
	}
}

/* A driver's queue set-up, with garbage wherever a value goes. */
static void attack_queue(struct vdev *d)
{
	if (d->common_bar < 0 || !d->bars[d->common_bar].map)
		return;
	volatile uint8_t *c = d->bars[d->common_bar].map + d->common_off;
	if (d->common_off + 0x38 > d->bars[d->common_bar].len)
		return;
	scramble_garbage();
	mmio_write(c + 0x14, 1, 0); /* device_status: reset */
	mmio_write(c + 0x14, 1, 1 | 2);
	mmio_write(c + 0x08, 4, 1);	  /* driver_feature_select: high word */
	mmio_write(c + 0x0c, 4, 1 | rnd()); /* VERSION_1 and random others */
	mmio_write(c + 0x08, 4, 0);
	mmio_write(c + 0x0c, 4, rnd());
	mmio_write(c + 0x14, 1, 1 | 2 | 8);
	int queues = 1 + below(3);
	for (int q = 0; q < queues; q++) {
		uint16_t sel = below(4);
		mmio_write(c + 0x16, 2, sel);
		uint16_t size = rnd() & 1 ? 1u << below(9) : (uint16_t)rnd();
		mmio_write(c + 0x18, 2, size);
		mmio_write(c + 0x1a, 2, rnd()); /* msix vector */
		mmio_write(c + 0x20, 8, garbage_or_random_addr());
		mmio_write(c + 0x28, 8, garbage_or_random_addr());
		mmio_write(c + 0x30, 8, garbage_or_random_addr());
		mmio_write(c + 0x1c, 2, 1); /* queue_enable */
	}
	mmio_write(c + 0x14, 1, 1 | 2 | 8 | 4); /* DRIVER_OK */
	if (d->notify_bar >= 0 && d->bars[d->notify_bar].map) {
		for (int k = 0; k < 8; k++) {
			uint16_t sel = below(4);
			size_t off = d->notify_off + (size_t)sel * d->notify_mult;
			if (off + 2 <= d->bars[d->notify_bar].len)
				mmio_write(d->bars[d->notify_bar].map + off, 2, sel);
			scramble_garbage(); /* change the rings under the device */
		}
	}
	ops_queue++;
}

int main(int argc, char **argv)
{
	int seconds = argc > 1 ? atoi(argv[1]) : 60;
	rng_state = argc > 2 ? strtoull(argv[2], 0, 0) : (uint64_t)time(0) * 2654435761u + getpid();
	if (!rng_state)
		rng_state = 1;
	printf("HOSTILE-SEED=%llu\n", (unsigned long long)rng_state);
	fflush(stdout);
	if (iopl(3)) {
		perror("iopl");
		return 2;
	}
	garbage = mmap(0, GARBAGE_PAGES * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED | MAP_POPULATE, -1, 0);
	if (garbage == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	garbage_phys = virt_to_phys(garbage);
	find_devices();
	printf("HOSTILE-DEVICES=%d garbage at %#llx\n", ndevs, (unsigned long long)garbage_phys);
	fflush(stdout);
	/* COM1 settings to restore: LCR, then IER and MCR with DLAB clear. */
	uint8_t lcr = inb(0x3fb);
	outb(lcr & 0x7f, 0x3fb);
	uint8_t ier = inb(0x3f9), mcr = inb(0x3fc);

	time_t end = time(0) + seconds;
	unsigned long rounds = 0;
	while (time(0) < end) {
		for (int i = 0; i < 64; i++) {
			uint64_t what = below(16);
			struct vdev *d = ndevs ? &devs[below(ndevs)] : 0;
			if (what < 3 || !d)
				attack_ports();
			else if (what < 6)
				attack_config(d);
			else if (what < 14)
				attack_bar(d);
			else
				attack_queue(d);
		}
		rounds++;
	}
	outb(0x03, 0x3fb); /* 8N1, DLAB clear */
	outb(ier, 0x3f9);
	outb(mcr, 0x3fc);
	outb(0x07, 0x3fa); /* FIFO on and cleared */
	printf("\nHOSTILE-DONE ports=%lu config=%lu bar=%lu queue=%lu\n", ops_port, ops_config,
	       ops_bar, ops_queue);
	fflush(stdout);
	return 0;
}
