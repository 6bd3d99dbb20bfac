/*
 * A tiny authoritative DNS responder for the NAT tests: the "upstream"
 * resolver that ivmm's DNS forwarder relays to. Answers an A query for
 * NAME with ADDRESS (TTL 60) and every other query with NXDOMAIN.
 * Each answer's source address is printed to stdout, so a test can see
 * that queries came through ivmm (the host), not from the guest.
 *
 * usage: dns_responder LISTEN-IP PORT NAME ADDRESS
 * Built statically by the tests (gcc -static -O2).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* Decodes the query name at p (no compression in queries) into out as
 * dotted text; returns the offset after the name, or -1. */
static int read_name(const unsigned char *msg, int len, int p, char *out, int cap)
{
	int n = 0;
	while (p < len) {
		int l = msg[p++];
		if (l == 0) {
			out[n] = 0;
			return p;
		}
		if (l > 63 || p + l > len || n + l + 2 > cap)
			return -1;
		if (n)
			out[n++] = '.';
		for (int i = 0; i < l; i++)
			out[n++] = tolower(msg[p + i]);
		p += l;
	}
	return -1;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s LISTEN-IP PORT NAME ADDRESS\n", argv[0]);
		return 2;
	}
	struct in_addr answer;
	if (!inet_aton(argv[4], &answer)) {
		fprintf(stderr, "bad address %s\n", argv[4]);
		return 2;
	}
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
	if (s < 0 || !inet_aton(argv[1], &sa.sin_addr) || bind(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
		perror("bind");
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("DNS-RESPONDER-READY\n");
	for (;;) {
		unsigned char msg[600];
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		int len = recvfrom(s, msg, 512, 0, (struct sockaddr *)&from, &fl);
		/* Header, one question, QR clear. */
		if (len < 12 || (msg[2] & 0x80) || msg[4] != 0 || msg[5] != 1)
			continue;
		char name[256];
		int end = read_name(msg, len, 12, name, sizeof name);
		if (end < 0 || end + 4 > len)
			continue;
		int qtype = msg[end] << 8 | msg[end + 1];
		end += 4;
		int hit = strcasecmp(name, argv[3]) == 0;
		printf("QUERY %s type %d from %s\n", name, qtype, inet_ntoa(from.sin_addr));
		/* Reply: the question, plus one A record when it is ours. */
		msg[2] = 0x84 | (msg[2] & 0x01); /* QR, AA, keep RD */
		msg[3] = hit ? 0x00 : 0x03;      /* NOERROR or NXDOMAIN */
		msg[6] = 0;
		msg[7] = (hit && qtype == 1) ? 1 : 0; /* ANCOUNT */
		memset(msg + 8, 0, 4);               /* NSCOUNT, ARCOUNT (EDNS dropped) */
		int out = end;
		if (hit && qtype == 1) {
			const unsigned char rr[] = { 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4 };
			memcpy(msg + out, rr, sizeof rr);
			out += sizeof rr;
			memcpy(msg + out, &answer, 4);
			out += 4;
		}
		sendto(s, msg, out, 0, (struct sockaddr *)&from, fl);
	}
}
