/* Standalone probe, not part of the build.
 * A plain read of memory as 1, 2, 4 or 8 interleaved streams, and one stream with software
 * prefetch (docs/BENCHMARKS.md, Zen 4).
 *
 *     gcc -O3 -march=znver3 benches/probes/plain_read.c -o /tmp/plain_read && /tmp/plain_read
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
volatile float sink;
#define DEF(N) static float s##N(const float*p,size_t len,int pfd){__m256 a[N][2];for(int i=0;i<N;i++)a[i][0]=a[i][1]=_mm256_setzero_ps(); \
 size_t per=len/N; per-=per%16; per+= (N>1)? 33*16:0; size_t lim=len/N - 32; lim-=lim%16;\
 for(size_t i=0;i<lim;i+=16){for(int s=0;s<N;s++){const float*q=p+s*per+i; if(pfd)_mm_prefetch((const char*)q+pfd,_MM_HINT_T0);\
   a[s][0]=_mm256_add_ps(a[s][0],_mm256_loadu_ps(q));a[s][1]=_mm256_add_ps(a[s][1],_mm256_loadu_ps(q+8));}}\
 __m256 t=a[0][0];for(int i=0;i<N;i++)t=_mm256_add_ps(t,_mm256_add_ps(a[i][0],a[i][1]));float o[8];_mm256_storeu_ps(o,t);return o[0];}
DEF(1) DEF(2) DEF(4) DEF(8)
int main(){size_t bytes=(size_t)512<<20;float*buf=mmap(0,bytes,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);madvise(buf,bytes,MADV_HUGEPAGE);
 for(size_t i=0;i<bytes/4;i++)buf[i]=1;
 const char*nm[]={"1","2","4","8","1 pf512","1 pf2048","2 pf1024"};double best[8]={0};size_t L=bytes/4-4096;
 for(int it=0;it<5;it++)for(int c=0;c<7;c++){double t0=now();float r;
  switch(c){case 0:r=s1(buf,L,0);break;case 1:r=s2(buf,L,0);break;case 2:r=s4(buf,L,0);break;case 3:r=s8(buf,L,0);break;case 4:r=s1(buf,L,512);break;case 5:r=s1(buf,L,2048);break;default:r=s2(buf,L,1024);}
  sink+=r;double g=L*4.0/(now()-t0)/1e9;if(g>best[c])best[c]=g;}
 for(int c=0;c<7;c++)printf("streams %s: %.1f\n",nm[c],best[c]);}
